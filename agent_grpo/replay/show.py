"""`replay show`: one trajectory, turn by turn, in the terminal.

Model text is always wrapped in `rich.text.Text` (never parsed as console markup), so a model
writing `[bold]` or `[/]` shows those characters and cannot break or restyle the output, and every
string of the record first goes through `_text.printable`, so terminal escape sequences a model
wrote are shown as `\x1b[...`, never sent to the terminal.
"""

from __future__ import annotations

import json

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent_grpo.content import ImagePart, TextPart
from agent_grpo.replay._text import printable_record
from agent_grpo.store.meta import RunMeta
from agent_grpo.store.record import StoredRecord, correctness
from agent_grpo.trajectory import ToolResult, Trajectory, Turn


def render(record: StoredRecord, meta: RunMeta | None = None) -> Group:
    """Everything about one stored trajectory as rich renderables."""
    record = printable_record(record)
    traj = record.trajectory
    parts: list[RenderableType] = [_header(record), _task(traj)]
    parts += [_turn(traj, turn) for turn in traj.turns]
    parts.append(_rewards(traj, meta))
    return Group(*parts)


def show(record: StoredRecord, meta: RunMeta | None = None, console: Console | None = None) -> None:
    (console or Console()).print(render(record, meta))


def _header(record: StoredRecord) -> Table:
    t = record.trajectory
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    correct = correctness(t)
    rows = {
        "trajectory": t.id,
        "env / task": f"{t.env} / {t.task.id}",
        "step / group / sample": f"{t.step} / {t.group_id} / {t.sample_index}",
        "termination": str(t.termination),
        "reward": f"{t.reward:.4g}" + ("" if correct is None else ("  (correct)" if correct else "  (wrong)")),
        "advantage": "-" if t.advantage is None else f"{t.advantage:+.4g}",
        "images": f"{len(t.images)}" + ("" if record.images_stored else " (pixels not stored: size cap)"),
    }
    for k, v in rows.items():
        grid.add_row(k, Text(v))
    return grid


def _task(traj: Trajectory) -> Panel:
    lines = [Text(traj.task.question), Text.assemble(("reference answer: ", "bold"), str(traj.task.answer))]
    for img in [i for i in traj.images if i.source == "task"]:  # numbered as the model saw them
        lines.append(Text(f"image {img.observation}: {img.width}x{img.height}  sha256 {img.sha256[:12]}", style="dim"))
    return Panel(Group(*lines), title="task", title_align="left")


def _turn(traj: Trajectory, turn: Turn) -> Panel:
    lines: list[RenderableType] = []
    if turn.think:
        lines.append(Text(turn.think, style="italic dim"))
    if not turn.format_ok:
        lines.append(Text.assemble(("format problem; raw text: ", "yellow"), turn.text))
    for call in turn.tool_calls:
        if call.parse_error:
            lines.append(Text.assemble(("→ unparsable call: ", "red"), call.parse_error, "\n  ", (call.raw, "dim")))
        else:
            lines.append(Text.assemble(("→ ", "cyan"), (call.name, "bold cyan"), " ", json.dumps(call.arguments)))
    for result in turn.results:
        lines.append(_result(result))
    for notice in turn.notices:
        lines.append(Text(f"notice: {notice}", style="yellow"))
    if turn.answer is not None:
        lines.append(Text.assemble(("answer: ", "bold green"), (turn.answer, "green")))
    lines.append(_tokens(traj, turn.index))
    title = f"turn {turn.index}" + (" (truncated)" if turn.truncated else "")
    return Panel(Group(*lines), title=title, title_align="left")


def _result(result: ToolResult) -> Text:
    if not result.ok:
        kind = str(result.error_kind) if result.error_kind else "error"
        return Text.assemble(("← ", "red"), (f"{result.name or 'call'} {kind}: ", "bold red"), (result.error or "", "red"))
    out = Text.assemble(("← ", "green"), (result.name, "bold green"), f" ({result.duration_s * 1000:.0f} ms)")
    for part in result.content:
        if isinstance(part, TextPart):
            out.append("\n  " + part.text)
        elif isinstance(part, ImagePart):
            out.append("\n  " + _image_line(part), style="magenta")
    return out


def _image_line(img: ImagePart) -> str:
    where = f" = box {[round(v, 1) for v in img.box.as_list()]} of image {img.root}" if img.box else " (no box mapping)"
    return f"image {img.observation}: {img.width}x{img.height} from image {img.parent}{where}  sha256 {img.sha256[:12]}"


def _tokens(traj: Trajectory, turn: int) -> Text:
    """Which tokens of this turn carry loss: the sampled ones (mask 1), never the injected ones."""
    sampled = [s for s in traj.segments if s.turn == turn and s.kind == "sampled"]
    injected = sum(len(s.token_ids) for s in traj.segments if s.turn == turn and s.kind == "injected")
    n = sum(len(s.token_ids) for s in sampled)
    lps = [lp for s in sampled for lp in (s.logprobs or [])]
    mean = f", mean sampling logprob {sum(lps) / len(lps):.3f}" if lps else ""
    if not traj.segments:
        return Text("tokens: not recorded", style="dim")
    return Text(f"trained on {n} sampled tokens{mean}; {injected} injected tokens not trained on", style="dim")


def _rewards(traj: Trajectory, meta: RunMeta | None) -> Group:
    weights = meta.rubric if meta else {}
    table = Table(title="rewards", title_justify="left")
    for col in ("component", "value", "weight", "weighted"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for name, value in traj.rewards.items():
        w = weights.get(name)
        table.add_row(Text(name), f"{value:.4g}", "?" if w is None else f"{w:g}", "" if w is None else f"{w * value:.4g}")
    table.add_row(Text("total", style="bold"), f"{traj.reward:.4g}", "", "")
    adv = "-" if traj.advantage is None else f"{traj.advantage:+.4g}"
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(traj.metrics.items()))
    return Group(table, Text.assemble(("advantage ", "bold"), adv), Text.assemble(("metrics ", "bold"), metrics))
