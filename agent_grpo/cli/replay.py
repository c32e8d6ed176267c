"""`agent-grpo replay ...`: look at a stored run (list, show, html, rescore, rerun, export, diff).

    agent-grpo replay list runs/exp1 --step 10-12 --correct --tool zoom_in
    agent-grpo replay show runs/exp1 s12-task3-1
    agent-grpo replay html runs/exp1 --step 12 --out report.html
    agent-grpo replay rescore runs/exp1 --weights accuracy=1,format=0
    agent-grpo replay rerun runs/exp1 --step 12
    agent-grpo replay export runs/exp1 sft_data --correct --best-per-group
    agent-grpo replay diff runs/exp1 0 50

A damaged run (a damaged record or image, a repaired index) never stops a command with a
traceback: what is damaged is left out, each command says what it skipped, and exits 0 unless
`--strict` is given (then 1). An output path that would overwrite something agent-grpo did not
write (a folder given for a file, the run itself, another program's `hf/`) is refused with a message.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_grpo.budget import VisualBudget
from agent_grpo.errors import AgentGrpoError
from agent_grpo.outputs import OutputError, check_output_file, write_atomic
from agent_grpo.replay import diff as diff_mod
from agent_grpo.replay import export as export_mod
from agent_grpo.replay import html as html_mod
from agent_grpo.replay._text import printable
from agent_grpo.replay.export import export as export_run
from agent_grpo.replay.filters import Filter, by_group, parse_steps
from agent_grpo.replay.html import write_report
from agent_grpo.replay.rerun import rerun as rerun_calls
from agent_grpo.replay.rescore import parse_weights, rubric_for
from agent_grpo.replay.rescore import rescore as rescore_rows
from agent_grpo.replay.show import show as show_record
from agent_grpo.store.record import IndexRow
from agent_grpo.store.run_store import RunStore
from agent_grpo.tools.registry import load_tools

replay_app = typer.Typer(
    help="Look at stored runs: list, show, html, rescore, rerun, export, diff.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="run directory (holds trajectories.jsonl)", file_okay=False)]
Steps = Annotated[str | None, typer.Option("--step", help="steps: 3, 3,5 or 2-4")]
EnvName = Annotated[str | None, typer.Option("--env-name", help="environment name of the trajectories")]
TaskId = Annotated[str | None, typer.Option("--task", help="task id (shell patterns allowed: train-*)")]
GroupId = Annotated[str | None, typer.Option("--group", help="group id (shell patterns allowed)")]
MinReward = Annotated[float | None, typer.Option("--min-reward", help="reward >= this")]
MaxReward = Annotated[float | None, typer.Option("--max-reward", help="reward <= this")]
Ending = Annotated[list[str] | None, typer.Option("--termination", help="answered, max_turns, truncated, ... (repeatable)")]
ToolUse = Annotated[str | None, typer.Option("--tool", help="'any', 'none', or a tool name the trajectory called")]
Correct = Annotated[bool | None, typer.Option("--correct/--wrong", help="correct (accuracy >= 0.5) or wrong ones")]
Strict = Annotated[bool, typer.Option("--strict", help="exit 1 if any record or image was damaged and skipped")]


def _say(console_: Console, text: str, style: str | None = None) -> None:
    """Print text that may come from the run: as plain text, control characters made visible."""
    console_.print(Text(printable(text), style=style))


def _finish(store: RunStore, skipped: list[str], strict: bool, seen: int = 0) -> None:
    """Report what was left out because it was damaged; with --strict, exit 1 if anything was."""
    for why in skipped[:20]:
        _say(err, f"skipped: {why}", "yellow")
    if len(skipped) > 20:
        _say(err, f"... and {len(skipped) - 20} more skipped", "yellow")
    images = list(store.damaged_images.items())[seen:]
    for sha, why in images[:20]:
        _say(err, f"damaged image {sha[:12]}: {why}", "yellow")
    if skipped or images or store.corrupt:
        _say(err, f"{len(skipped) + len(store.corrupt)} damaged trajectories skipped, {len(images)} damaged images "
                  "left out", "yellow")
        if strict:
            raise typer.Exit(1)


def _out_error(e: Exception, hint: str) -> typer.BadParameter:
    return typer.BadParameter(printable(str(e)), param_hint=hint)


def _open(run_dir: Path) -> RunStore:
    try:
        store = RunStore.open(run_dir)
    except (AgentGrpoError, OSError, ValueError) as e:
        raise typer.BadParameter(printable(str(e)), param_hint="RUN_DIR") from e
    for problem in store.problems():
        _say(err, f"warning: {problem}", "yellow")
    return store


def _select(store: RunStore, step, env, task, group, min_reward, max_reward, termination, tool, correct) -> list[IndexRow]:
    try:
        f = Filter(steps=parse_steps(step), env=env, task=task, group=group, min_reward=min_reward,
                   max_reward=max_reward, termination=frozenset(termination) if termination else None,
                   tool=tool, correct=correct)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    return f.apply(store.rows)


def _fmt(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.3g}" if signed else f"{v:.3g}")


@replay_app.command("list")
def list_cmd(run_dir: RunDir, step: Steps = None, env: EnvName = None, task: TaskId = None, group: GroupId = None,
             min_reward: MinReward = None, max_reward: MaxReward = None, termination: Ending = None,
             tool: ToolUse = None, correct: Correct = None,
             limit: Annotated[int, typer.Option(help="rows to print (0: all)")] = 50) -> None:
    """List stored trajectories matching the filters."""
    store = _open(run_dir)
    rows = _select(store, step, env, task, group, min_reward, max_reward, termination, tool, correct)
    table = Table(title=Text(printable(f"{len(rows)} of {len(store)} trajectories in {run_dir}")))
    table.add_column("id", no_wrap=True)
    for col in ("step", "reward", "adv", "correct", "ended", "tool calls", "turns"):
        table.add_column(col)
    for r in rows[: limit or None]:
        calls = ", ".join(f"{name or '?'}×{n}" if n > 1 else name or "?" for name, n in Counter(r.tools).items())
        calls += f" ({r.failed_calls} failed)" if r.failed_calls else ""
        mark = {True: "yes", False: "no", None: "-"}[r.correct]
        cells = (r.id, r.step, _fmt(r.reward), _fmt(r.advantage, True), mark, r.termination, calls or "-", r.turns)
        table.add_row(*(Text(printable(str(x))) for x in cells))
    console.print(table)
    if limit and len(rows) > limit:
        console.print(f"{len(rows) - limit} more; use --limit 0 to list all")


@replay_app.command("show")
def show_cmd(run_dir: RunDir, traj_id: Annotated[str, typer.Argument(help="trajectory id (or a unique prefix)")]) -> None:
    """Show one trajectory turn by turn: thinking, calls, results, answer, rewards, trained tokens."""
    store = _open(run_dir)
    if traj_id not in store:
        matches = [r.id for r in store.rows if r.id.startswith(traj_id)]
        if len(matches) != 1:
            hint = f"candidates: {', '.join(matches[:10])}" if matches else "see `agent-grpo replay list`"
            raise typer.BadParameter(printable(f"no unique trajectory {traj_id!r}; {hint}"), param_hint="TRAJ_ID")
        traj_id = matches[0]
    try:
        record = store.record(traj_id)
    except (AgentGrpoError, KeyError) as e:
        _say(err, f"error: trajectory {traj_id} cannot be shown: {e}", "red")
        raise typer.Exit(1) from e
    show_record(record, store.meta, console)


@replay_app.command("html")
def html_cmd(run_dir: RunDir, step: Steps = None, env: EnvName = None, task: TaskId = None, group: GroupId = None,
             min_reward: MinReward = None, max_reward: MaxReward = None, termination: Ending = None,
             tool: ToolUse = None, correct: Correct = None,
             out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("replay.html"),
             max_groups: Annotated[int, typer.Option(min=0, help="groups in the report (0: all)")] = 20,
             max_side: Annotated[int, typer.Option(min=16, help="longest side of embedded images, pixels")] = 640,
             strict: Strict = False) -> None:
    """Write a self-contained HTML report: group members side by side, zooms drawn on their images."""
    store = _open(run_dir)
    try:
        html_mod.check_out(store, out)
    except OutputError as e:
        raise _out_error(e, "--out") from e
    rows = _select(store, step, env, task, group, min_reward, max_reward, termination, tool, correct)
    groups = by_group(rows)
    if max_groups and len(groups) > max_groups:
        err.print(f"showing the first {max_groups} of {len(groups)} groups; use --max-groups 0 for all")
        keep = set(list(groups)[:max_groups])
        rows = [r for r in rows if r.group_id in keep]
    title = f"agent-grpo replay: {run_dir.name}" + (f", step {step}" if step else "")
    skipped: list[str] = []
    try:
        path = write_report(store, rows, out, title=title, max_side=max_side, skipped=skipped)
    except OutputError as e:
        raise _out_error(e, "--out") from e
    except OSError as e:
        raise _out_error(e, "--out") from e
    _say(console, f"wrote {path} ({len(rows) - len(skipped)} trajectories, {path.stat().st_size / 1e6:.1f} MB)")
    _finish(store, skipped, strict)


@replay_app.command("rescore")
def rescore_cmd(run_dir: RunDir, step: Steps = None, env: EnvName = None, task: TaskId = None, group: GroupId = None,
                min_reward: MinReward = None, max_reward: MaxReward = None, termination: Ending = None,
                tool: ToolUse = None, correct: Correct = None,
                weights: Annotated[str | None, typer.Option(help="change weights: accuracy=1,format=0")] = None,
                rubric_env: Annotated[str | None, typer.Option("--env", help="use this installed env's rubric")] = None,
                out: Annotated[Path | None, typer.Option(help="write every rescored trajectory to this JSONL")] = None,
                strict: Strict = False) -> None:
    """Recompute rewards with another rubric, offline (no arguments: the run's own, to check it)."""
    store = _open(run_dir)
    if out is not None:
        try:
            check_output_file(out, _is_rescore_output, "rescore output", inside_not=[store.path])
        except OutputError as e:
            raise _out_error(e, "--out") from e
    rows = _select(store, step, env, task, group, min_reward, max_reward, termination, tool, correct)
    try:
        rubric = rubric_for(store.meta, rubric_env, parse_weights(weights))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    skipped: list[str] = []
    results = rescore_rows(store, rows, rubric, skipped=skipped)
    changed = [r for r in results if r.changed]
    table = Table(title=f"rescored with {rubric.describe()}")
    for col in ("id", "old", "new", "delta", "components (new)"):
        table.add_column(col)
    for r in changed[:30]:
        parts = ", ".join(f"{k}={v:.3g}" for k, v in r.new.items())
        table.add_row(Text(printable(r.id)), _fmt(r.old_reward), _fmt(r.new_reward), _fmt(r.new_reward - r.old_reward, True),
                      Text(printable(parts)))
    if changed:
        console.print(table)
    if results:
        old, new = (sum(xs) / len(results) for xs in zip(*((r.old_reward, r.new_reward) for r in results), strict=True))
        console.print(f"{len(changed)} of {len(results)} rewards changed; mean reward {old:.4g} -> {new:.4g}")
    if out:
        lines = [json.dumps({"id": r.id, "group_id": r.group_id, "step": r.step, "old_reward": r.old_reward,
                             "new_reward": r.new_reward, "old": r.old, "new": r.new}) + "\n" for r in results]
        try:
            write_atomic(out, "".join(lines))
        except OSError as e:
            raise _out_error(e, "--out") from e
        _say(console, f"wrote {out}")
    _finish(store, skipped, strict)


def _is_rescore_output(path: Path) -> bool:
    """Whether `path` is a file `replay rescore --out` wrote (its lines hold old and new rewards)."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        row = json.loads(first) if first.strip() else {}
    except (OSError, ValueError):
        return False
    return path.stat().st_size == 0 or (isinstance(row, dict) and {"id", "old_reward", "new_reward"} <= row.keys())


@replay_app.command("rerun")
def rerun_cmd(run_dir: RunDir, step: Steps = None, env: EnvName = None, task: TaskId = None, group: GroupId = None,
              min_reward: MinReward = None, max_reward: MaxReward = None, termination: Ending = None,
              tool: ToolUse = None, correct: Correct = None,
              timeout: Annotated[float, typer.Option(min=0.001, help="seconds per tool call")] = 10.0,
              strict: Strict = False) -> None:
    """Re-execute the recorded tool calls on the stored images; exit 1 if any output differs."""
    store = _open(run_dir)
    rows = _select(store, step, env, task, group, min_reward, max_reward, termination, tool, correct)
    tools = load_tools()
    for name, info in store.meta.tools.items():
        t = tools.get(name)
        if t is None:
            _say(err, f"warning: tool {name} is not installed; its calls will differ", "yellow")
        elif t.manifest.version != info.version:
            _say(err, f"warning: {name} is version {t.manifest.version}, the run used {info.version}", "yellow")
    damaged: list[str] = []
    report = rerun_calls(store.iter(rows, images=True, skipped=damaged), tools, store.meta.budget or VisualBudget(), timeout)
    skipped = ", ".join(f"{n} {why}" for why, n in report.skipped.items()) or "none"
    _say(console, f"{report.checked} tool calls re-run in {len(rows) - len(damaged)} trajectories; skipped: {skipped}")
    for d in report.diffs[:50]:
        _say(console, f"DIFF {d.trajectory} turn {d.turn} {d.tool} {d.call_id}: {d.what}: {d.recorded!r} -> {d.rerun!r}", "red")
    _finish(store, damaged, strict)
    if report.diffs:
        console.print(Text(f"{len(report.diffs)} differences", style="bold red"))
        raise typer.Exit(1)
    console.print(Text("identical", style="bold green"))


@replay_app.command("export")
def export_cmd(run_dir: RunDir, out_dir: Annotated[Path, typer.Argument(help="folder to write the dataset to")],
               step: Steps = None, env: EnvName = None, task: TaskId = None, group: GroupId = None,
               min_reward: MinReward = None, max_reward: MaxReward = None, termination: Ending = None,
               tool: ToolUse = None, correct: Correct = None,
               best_per_group: Annotated[bool, typer.Option(help="keep only the highest-reward member of each group")] = False,
               hf: Annotated[bool, typer.Option(help="also write a datasets.save_to_disk folder (OUT/hf)")] = True,
               strict: Strict = False) -> None:
    """Write selected trajectories as an SFT dataset: OUT/sft.jsonl + images, and OUT/hf."""
    store = _open(run_dir)
    try:
        export_mod.check_out(store, out_dir)
    except OutputError as e:
        raise _out_error(e, "OUT_DIR") from e
    rows = _select(store, step, env, task, group, min_reward, max_reward, termination, tool, correct)
    if best_per_group:
        rows = [max(members, key=lambda r: r.reward) for members in by_group(rows).values()]
    missing = [r.id for r in rows if not r.images_stored]
    if missing:
        _say(err, f"skipping {len(missing)} trajectories whose images were not stored (size cap): {missing[:5]}")
        rows = [r for r in rows if r.images_stored]
    damaged: list[str] = []
    try:
        report = export_run(store, store.iter(rows, skipped=damaged), out_dir, hf=hf,
                            description={"selected": len(rows)}, skipped=damaged)
    except (OutputError, OSError) as e:
        raise _out_error(e, "OUT_DIR") from e
    _say(console, f"wrote {report.written} conversations to {out_dir / 'sft.jsonl'}" + (f" and {out_dir / 'hf'}" if hf else ""))
    _finish(store, report.skipped, strict)


@replay_app.command("diff")
def diff_cmd(run_dir: RunDir, step_a: Annotated[int, typer.Argument(help="earlier step")],
             step_b: Annotated[int, typer.Argument(help="later step")], strict: Strict = False) -> None:
    """How behaviour changed between two steps: accuracy, calls, zoom tightness, lengths, endings."""
    store = _open(run_dir)
    stats = []
    skipped: list[str] = []
    for s in (step_a, step_b):
        rows = [r for r in store.rows if r.step == s]
        if not rows:
            raise typer.BadParameter(f"no trajectories at step {s}")
        stats.append(diff_mod.step_stats(store.iter(rows, skipped=skipped), s))
    a, b = stats
    table = Table(title=f"step {step_a} ({a.n} trajectories) -> step {step_b} ({b.n})")
    for col in ("statistic", f"step {step_a}", f"step {step_b}", "change"):
        table.add_column(col, justify="left" if col == "statistic" else "right")
    for name, x, y, d in diff_mod.diff_rows(a, b):
        table.add_row(Text(printable(name)), _fmt(x), _fmt(y), _fmt(d, True))
    console.print(table)
    _finish(store, skipped, strict)
