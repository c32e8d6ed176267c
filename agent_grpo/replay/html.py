"""`replay html`: a self-contained HTML report of stored trajectories, grouped, members side by side.

One file, no network: CSS, script and images are inside it (`_figures`). For each group: the task,
its original image with every member's zoom boxes; then the G members in columns, each turn with
thinking, tool calls, results and errors, every zoom drawn on its parent image next to the crop it
gave, the answer, the tokens trained on, and the reward breakdown. A small script filters members.

Safety: all model text goes through `_markup.el`, which escapes it, and a Content-Security-Policy
allows only our own style and script (pinned by hash) and `data:` images, so even a bug in escaping
could not run a script a model wrote.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template

from agent_grpo.content import ImagePart, TextPart
from agent_grpo.outputs import check_output_file, write_atomic
from agent_grpo.replay._figures import ImageDefs, box_on_parent, figure
from agent_grpo.replay._markup import Markup, el, esc
from agent_grpo.replay.filters import by_group
from agent_grpo.store.record import IndexRow, correctness
from agent_grpo.store.run_store import RunStore
from agent_grpo.trajectory import Trajectory, Turn

COLOURS = 8  # box colour classes c0..c7, by sample index


def _asset(name: str) -> str:
    return resources.files("agent_grpo.replay").joinpath("templates", name).read_text()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


GENERATOR = '<meta name="generator" content="agent-grpo replay html">'  # how we know a file is our report


def render_report(store: RunStore, rows: Sequence[IndexRow], title: str = "agent-grpo replay", max_side: int = 640,
                  skipped: list[str] | None = None) -> str:
    """The report's HTML for `rows` (shown grouped by group id, in order).

    A damaged record is left out and described in `skipped` (and counted in the page's header);
    a damaged image is drawn as a placeholder and noted in `store.damaged_images`."""
    skipped = [] if skipped is None else skipped
    defs = ImageDefs(store, max_side=max_side)
    groups = by_group(rows)
    sections, shown = [], []
    for members in groups.values():
        trajs = list(store.iter(members, skipped=skipped))
        if trajs:
            sections.append(_group(defs, trajs, store.meta.rubric))
            shown += [r for r in members if r.id in {t.id for t in trajs}]
    terminations = sorted({r.termination for r in shown if r.termination})
    css, js = _asset("report.css"), _asset("report.js")
    csp = f"default-src 'none'; img-src data:; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}"
    header = _header(store, shown, len(sections), terminations, len(skipped))
    page = Template(_asset("report.html")).substitute(
        csp=esc(csp), title=esc(title), css=css, js=js, header=header, defs=defs.markup(), body=Markup("".join(sections)),
    )
    return page


def is_report(path: Path) -> bool:
    """Whether the file at `path` is a report this module wrote (so it may be replaced)."""
    try:
        with path.open("rb") as f:
            return GENERATOR.encode() in f.read(4096)
    except OSError:
        return False


def check_out(store: RunStore, out: str | Path) -> Path:
    """`out` if the report may be written there: not a folder, not another file, not inside the run's own
    entries (records, index, images). A report file beside them (`RUN/report.html`) is allowed: an existing
    one is replaced only if this module wrote it."""
    target = Path(out).resolve()
    own = [entry for entry in store.path.iterdir() if entry.resolve() != target] if store.path.is_dir() else []
    return check_output_file(out, is_report, "report", inside_not=own)


def write_report(store: RunStore, rows: Sequence[IndexRow], out: str | Path, **kwargs) -> Path:
    out = check_out(store, out)
    write_atomic(out, render_report(store, rows, **kwargs))
    return out


def _header(store: RunStore, rows: Sequence[IndexRow], n_groups: int, terminations: list[str], damaged: int = 0) -> Markup:
    meta = store.meta
    rubric = " + ".join(f"{w:g} × {name}" for name, w in meta.rubric.items()) or "unknown"
    steps = sorted({r.step for r in rows if r.step is not None})
    facts = [
        f"run {store.path}", f"env {meta.env or '?'}", f"rubric {rubric}",
        f"steps {', '.join(map(str, steps)) or '-'}", f"{n_groups} groups, {len(rows)} trajectories",
    ]
    if damaged:
        facts.append(f"{damaged} damaged trajectories left out")
    options = [el("option", "any", value="any")] + [el("option", t, value=t) for t in terminations]
    form = el(
        "form",
        el("label", "correct ", el("select", [el("option", v, value=v) for v in ("any", "yes", "no")], name="correct")),
        el("label", "tools ", el("select", [el("option", v, value=v) for v in ("any", "used", "none")], name="tools")),
        el("label", "termination ", el("select", options, name="termination")),
        el("label", "reward ≥ ", el("input", type="number", step="any", name="min_reward")),
        el("button", "reset", type="reset"),
        el("span", el("output", len(rows), id="shown"), f" of {len(rows)} shown", class_="count"),
        id="filters",
    )
    return el("header", el("p", " · ".join(facts), class_="facts"), form)


def _group(defs: ImageDefs, members: list[Trajectory], weights: dict[str, float]) -> Markup:
    first = members[0]
    task = first.task
    looks = []  # every member's zoom boxes on the original image(s)
    for img in [i for i in first.images if i.source == "task"]:  # with their observation numbers
        boxes = [
            (r.box, f"c{t.sample_index % COLOURS}", f"#{t.sample_index}: image {r.observation}")
            for t in members for r in _result_images(t) if r.box is not None and r.root == img.observation
        ]
        looks.append(figure(defs, img, f"original image {img.observation} ({img.width}x{img.height}), all members' zooms", boxes))
    step = "-" if first.step is None else first.step
    head = el(
        "div",
        el("h2", f"group {first.group_id}", el("small", f" step {step} · task {task.id} · env {first.env}")),
        el("p", task.question, class_="question"),
        el("p", el("b", "reference answer: "), str(task.answer), class_="reference"),
        el("div", looks, class_="figures"),
        class_="task",
    )
    cards = [_member(defs, t, weights) for t in members]
    return el("section", head, el("div", cards, class_="members"), class_="group", data_group=first.group_id)


def _member(defs: ImageDefs, t: Trajectory, weights: dict[str, float]) -> Markup:
    correct = correctness(t)
    mark = {True: ("✓ correct", "yes"), False: ("✗ wrong", "no"), None: ("", "unknown")}[correct]
    adv = "-" if t.advantage is None else f"{t.advantage:+.3f}"
    head = el(
        "header",
        el("span", f"#{t.sample_index}", class_=f"swatch c{t.sample_index % COLOURS}"),
        el("span", f"reward {t.reward:.3f}", class_="reward"), el("span", f"adv {adv}"),
        el("span", str(t.termination or "?")), el("span", mark[0], class_=f"verdict {mark[1]}"),
        el("div", t.id, class_="tid"),
    )
    turns = el("ol", [_turn(defs, t, turn) for turn in t.turns], class_="turns", start=0)
    metrics = el("details", el("summary", "metrics"), _table(["metric", "value"], [[k, f"{v:.4g}"] for k, v in sorted(t.metrics.items())]))
    return el(
        "article", head, _rewards(t, weights), turns, metrics, class_="member",
        data_correct=mark[1], data_tools=t.num_tool_calls, data_termination=str(t.termination or ""),
        data_reward=f"{t.reward:.6g}",
    )


def _turn(defs: ImageDefs, t: Trajectory, turn: Turn) -> Markup:
    items: list[Markup] = []
    if turn.think:
        items.append(el("p", turn.think, class_="think"))
    if not turn.format_ok:
        items.append(el("details", el("summary", "format problem: raw text"), el("pre", turn.text), class_="raw"))
    for call in turn.tool_calls:
        if call.parse_error:
            items.append(el("div", el("b", "unparsable call: "), call.parse_error, el("pre", call.raw), class_="call bad"))
        else:
            items.append(el("div", el("code", call.name, class_="tool"), " ", el("code", json.dumps(call.arguments)), class_="call"))
    images = _by_observation(t)
    for result in turn.results:
        if not result.ok:
            kind = str(result.error_kind or "error")
            items.append(el("div", el("b", f"{result.name or 'call'} {kind}: "), result.error, class_="result error"))
            continue
        texts = [p.text for p in result.content if isinstance(p, TextPart)]
        zooms = [_zoom(defs, img, images, t) for img in result.images]
        items.append(el("div", el("b", f"{result.name}: "), " ".join(texts), zooms, class_="result ok"))
    items += [el("p", n, class_="notice") for n in turn.notices]
    if turn.answer is not None:
        items.append(el("p", el("b", "answer: "), turn.answer, class_="answer"))
    items.append(el("p", _tokens(t, turn.index), class_="tokens"))
    return el("li", items, class_="turn")


def _zoom(defs: ImageDefs, img: ImagePart, images: dict[int, ImagePart], t: Trajectory) -> Markup:
    """The original image and the parent image with the region drawn on them, then the new image."""
    colour = f"c{t.sample_index % COLOURS}"
    figures = []
    root = images.get(img.root)
    if root is not None and img.parent != img.root and img.box is not None:
        figures.append(figure(defs, root, f"original image {root.observation}", [(img.box, colour, "region")]))
    parent = images.get(img.parent) if img.parent is not None else None
    if parent is not None:
        box = box_on_parent(img, parent)
        note = "" if box else ", region unknown"
        boxes = [(box, colour, f"image {img.observation}")] if box else []
        figures.append(figure(defs, parent, f"on image {parent.observation}{note}", boxes))
    figures.append(figure(defs, img, f"→ image {img.observation} ({img.width}x{img.height})"))
    return el("div", figures, class_="zoom")


def _rewards(t: Trajectory, weights: dict[str, float]) -> Markup:
    rows = []
    for name, value in t.rewards.items():
        w = weights.get(name)
        rows.append([name, f"{value:.3g}", "?" if w is None else f"{w:g}", "" if w is None else f"{w * value:.3g}"])
    rows.append([el("b", "total"), "", "", f"{t.reward:.3g}"])
    return _table(["reward", "value", "weight", "weighted"], rows, class_="rewards")


def _tokens(t: Trajectory, turn: int) -> str:
    if not t.segments:
        return "tokens not recorded"
    trained = sum(len(s.token_ids) for s in t.segments if s.turn == turn and s.kind == "sampled")
    injected = sum(len(s.token_ids) for s in t.segments if s.turn == turn and s.kind == "injected")
    return f"trained on {trained} sampled tokens; {injected} injected tokens not trained on"


def _table(header: list[str], rows: list[list], class_: str | None = None) -> Markup:
    head = el("tr", [el("th", h) for h in header])
    body = [el("tr", [el("td", c) for c in row]) for row in rows]
    return el("table", el("thead", head), el("tbody", body), class_=class_)


def _result_images(t: Trajectory) -> list[ImagePart]:
    return [img for r in t.tool_results for img in r.images]


def _by_observation(t: Trajectory) -> dict[int, ImagePart]:
    # Result images too: an image made in the last turn may have been dropped from `t.images`.
    found = {img.observation: img for img in _result_images(t)}
    found.update({img.observation: img for img in t.images})
    return found
