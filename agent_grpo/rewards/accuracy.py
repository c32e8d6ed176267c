"""Answer accuracy: comparison functions and the `accuracy(kind)` reward factory.

Every comparison is `(prediction, reference, **opts) -> float` in [0, 1]. The prediction is model
output, so anything goes (None, blank, garbage, a novel): it never raises and scores 0 when it cannot
be read. The reference comes from the task row: a missing or malformed one is a data bug and raises
ValueError (the `accuracy` reward adds the task id).

    accuracy("exact")                      # normalised string match
    accuracy("choice", weight=0.8)         # multiple choice; options from task.metadata["choices"]
    accuracy("numeric", rel_tol=0.05)      # ChartQA-style relaxed accuracy
    accuracy("math")                       # symbolic equivalence through math_verify
    accuracy("iou")                        # grounding: IoU of the answered box with the reference box
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from agent_grpo.boxes import Box
from agent_grpo.rewards._math import MathWorker, equivalent_in_process
from agent_grpo.rewards._text import normalize_answer
from agent_grpo.rewards.choice import choice_letter
from agent_grpo.rewards.rubric import RewardFn, reward
from agent_grpo.trajectory import Trajectory

logger = logging.getLogger(__name__)

Kind = Literal["exact", "choice", "numeric", "math", "iou"]

# ---- exact match -----------------------------------------------------------------------------


def exact_match(prediction: str | None, reference: Any, *, number_words: bool = True) -> float:
    """1.0 if the normalised prediction equals the normalised reference (or any of a list of them).

    See `normalize_answer`. A prediction that normalises to nothing scores 0.
    """
    refs = _references(reference)
    if not isinstance(prediction, str):
        return 0.0
    pred = normalize_answer(prediction, number_words)
    if not pred:
        return 0.0
    return float(any(pred == normalize_answer(r, number_words) for r in refs))


def _references(reference: Any) -> list[str]:
    if reference is None:
        raise ValueError("the task has no reference answer (task.answer is None)")
    if isinstance(reference, str | int | float) and not isinstance(reference, bool):
        return [_format_number(reference) if not isinstance(reference, str) else reference]
    if isinstance(reference, Sequence) and reference and all(isinstance(r, str | int | float) for r in reference):
        return [r if isinstance(r, str) else _format_number(r) for r in reference]
    raise ValueError(f"a reference answer must be a string, a number or a list of them, got {reference!r}")


def _format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---- multiple choice: `choice_letter` lives in agent_grpo.rewards.choice ---------------------------

# ---- numbers -----------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"""
    (?<![\w.])                                   # not inside a word or after a decimal point
    (?P<sign>[-+\u2212])?
    (?=\.?[0-9])
    (?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]*)
    (?P<frac>\.[0-9]+)?
    (?:[eE](?P<exp>[-+]?[0-9]{1,4})(?![0-9]))?
    (?:\s*/\s*(?P<den>[0-9]+(?:\.[0-9]+)?))?
    (?P<pct>\s*%)?
    """,
    re.VERBOSE,
)


def parse_number(text: str) -> list[float]:
    """The first number in `text` as candidate values: one, or two for a percentage (50% -> 50, 0.5).

    Reads "1,234.5", "-3", "1e-3", "3/4", "50%", "approximately 12", "$12 million" (12), and a lone
    number word ("seven"). Returns [] when there is none (or it is not finite).
    """
    for m in _NUMBER.finditer(text):
        try:
            value = float(m.group("int").replace(",", "") + (m.group("frac") or "") + "e" + (m.group("exp") or "0"))
            if m.group("den") is not None:
                value /= float(m.group("den"))
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        if m.group("sign") in ("-", "\u2212"):
            value = -value
        if not math.isfinite(value):
            return []
        return [value, value / 100] if m.group("pct") else [value]
    words = normalize_answer(text).split()
    if len(words) == 1 and words[0].isdigit():  # "seven" -> "7"
        return [float(words[0])]
    return []


def numeric(prediction: str | None, reference: Any, *, rel_tol: float = 1e-6, abs_tol: float = 0.0) -> float:
    """1.0 if the first number in the prediction is within tolerance of the reference number.

    Within means `|p - r| <= max(abs_tol, rel_tol * |r|)`: relative to the *reference* (not
    symmetric like `math.isclose`), edges included. A percentage matches either reading ("50%" is
    50 or 0.5), so does a percentage reference. ChartQA's relaxed accuracy is `rel_tol=0.05`.
    """
    if rel_tol < 0 or abs_tol < 0:
        raise ValueError(f"tolerances must be >= 0, got rel_tol={rel_tol}, abs_tol={abs_tol}")
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        refs = [float(reference)]
    elif isinstance(reference, str):
        refs = parse_number(reference)
    else:
        refs = []
    if not refs:
        raise ValueError(f"a numeric reference must be a number or a string holding one, got {reference!r}")
    if not isinstance(prediction, str):
        return 0.0
    for p in parse_number(prediction):
        for r in refs:
            slack = 1e-12 * max(1.0, abs(r))  # so that 105 vs 100 at rel_tol=0.05 is inside, not a rounding coin flip
            if abs(p - r) <= max(abs_tol, rel_tol * abs(r)) + slack:
                return 1.0
    return 0.0


# ---- math --------------------------------------------------------------------------------------

_MATH_WORKER = MathWorker()
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def math_equivalent(
    prediction: str | None, reference: Any, *, timeout_s: float = 5.0, max_chars: int = 2000, isolate: bool = True
) -> float:
    """1.0 if math_verify shows the prediction equal to the reference ("\\frac{1}{2}" == "0.5",
    "$x^2+2x+1$" == "(x+1)^2"); 0 for a different, unparsable or timed-out answer.

    Bare LaTeX is tried `$`-delimited as well. Only the last `max_chars` characters of the prediction
    are read (the final answer is at the end). A list reference matches if any of it does.

    With `isolate` (the default) math_verify runs in a child process killed after `timeout_s`, which
    works from any thread and never hangs (see `agent_grpo.rewards._math`). `isolate=False` runs it
    in-process: math_verify's SIGALRM time-outs on the main thread, and *none* elsewhere (they raise
    off the main thread, so they are disabled there).
    """
    golds = _references(reference)
    if not isinstance(prediction, str) or not prediction.strip():
        return 0.0
    prediction = prediction[-max_chars:]
    return float(any(_math_equal(gold, prediction, timeout_s, isolate) for gold in golds))


def _math_equal(gold: str, prediction: str, timeout_s: float, isolate: bool) -> bool:
    if isolate:
        try:
            return _MATH_WORKER.equivalent(gold, prediction, timeout_s)
        except (OSError, TimeoutError) as e:
            _warn_once(f"could not start the math_verify worker process ({e}); comparing in-process instead")
    on_main = threading.current_thread() is threading.main_thread()
    try:
        return equivalent_in_process(gold, prediction, max(1, int(timeout_s)) if on_main else None)
    except Exception:
        return False


# ---- boxes -------------------------------------------------------------------------------------

_N = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUM = re.compile(_N)
_FOUR_IN_BRACKETS = re.compile(rf"\s*{_N}(?:\s*[,\s]\s*{_N}){{3}}\s*")
_KEYED_BOX = re.compile(r"[\"']?(?:bbox_2d|bbox|box)[\"']?\s*[:=]\s*[\[(]([^\[\]()]*)[\])]", re.IGNORECASE)
_BRACKETED = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_BARE_RUN = re.compile(rf"(?<![\w.]){_N}(?:\s*,\s*{_N})+(?![\w.])")  # comma-separated numbers, maximal


def parse_box(text: str | None) -> Box | None:
    """The first box `[x1, y1, x2, y2]` written in `text`, or None.

    Read, in order of preference: a keyed box (`{"bbox_2d": [...]}`, also `bbox`/`box`, JSON or
    not, code-fenced or not), a bracketed or parenthesised group of exactly four numbers (commas or
    spaces between), and a run of exactly four bare comma-separated numbers ("1, 2, 3, 4, 5" is not
    a box). A box with x2 < x1 or y2 < y1 is None: no credit for a box written backwards.
    """
    if not isinstance(text, str):
        return None
    groups = [m.group(1) for m in _KEYED_BOX.finditer(text)] + [m.group(1) for m in _BRACKETED.finditer(text)]
    found = next((g for g in groups if _FOUR_IN_BRACKETS.fullmatch(g)), None)
    if found is None:
        found = next((m.group(0) for m in _BARE_RUN.finditer(text) if len(_NUM.findall(m.group(0))) == 4), None)
    if found is None:
        return None
    try:
        return Box.from_list([float(v) for v in _NUM.findall(found)])
    except ValueError:  # backwards or not finite
        return None


def box_iou(prediction: str | None, reference: Any) -> float:
    """IoU of the box written in the prediction (see `parse_box`) with the reference box; 0 if none.

    Both must be in the same coordinate frame (whatever frame the task asks the model to answer in).
    The reference is `[x1, y1, x2, y2]`, a `Box`, or a string holding one.
    """
    ref = _reference_box(reference)
    pred = parse_box(prediction)
    return ref.iou(pred) if pred is not None else 0.0


def _reference_box(reference: Any) -> Box:
    if isinstance(reference, Box):
        return reference
    box = parse_box(reference) if isinstance(reference, str) else None
    if box is None and isinstance(reference, Sequence) and not isinstance(reference, str):
        box = Box.from_list(list(reference))  # raises ValueError with the reason
    if box is None:
        raise ValueError(f"a box reference must be [x1, y1, x2, y2], got {reference!r}")
    return box


# ---- the reward factory -----------------------------------------------------------------------

COMPARATORS: dict[str, Callable[..., float]] = {
    "exact": exact_match,
    "choice": choice_letter,
    "numeric": numeric,
    "math": math_equivalent,
    "iou": box_iou,
}


def accuracy(kind: Kind, name: str = "accuracy", weight: float = 1.0, **opts: Any) -> RewardFn:
    """A reward comparing the trajectory's final answer (`traj.answer`) with `traj.task.answer`.

    `kind` picks the comparison ("exact", "choice", "numeric", "math", "iou", see `COMPARATORS`);
    `opts` are its keyword options, checked here. For "choice" the options default to
    `task.metadata["choices"]` of each task. No answer scores 0; a bad reference raises ValueError
    naming the task.
    """
    if kind not in COMPARATORS:
        raise ValueError(f"unknown accuracy kind {kind!r}; choose one of {sorted(COMPARATORS)}")
    compare = COMPARATORS[kind]
    try:
        inspect.signature(compare).bind("", "", **opts)
    except TypeError as e:
        params = [p for p in inspect.signature(compare).parameters if p not in ("prediction", "reference")]
        raise TypeError(f"accuracy({kind!r}) got bad options {sorted(opts)}: {e}; it takes {params}") from e

    def score(traj: Trajectory) -> float:
        kwargs = dict(opts)
        if kind == "choice" and kwargs.get("choices") is None:
            kwargs["choices"] = traj.task.metadata.get("choices")
        try:
            return compare(traj.answer, traj.task.answer, **kwargs)
        except ValueError as e:
            raise ValueError(f"task {traj.task.id!r}: {e}") from e

    score.__doc__ = f"{compare.__name__} of the final answer with the task's reference answer."
    return reward(name, weight=weight)(score)
