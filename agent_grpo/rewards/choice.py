"""Multiple-choice answer extraction: which option letter does a free-form answer pick?

One extractor for every multiple-choice benchmark (V*-Bench, HR-Bench, ...) and for the `choice`
accuracy reward, so training and evaluation score an answer the same way. It follows VLMEvalKit's
rule-based matcher (`vlmeval/utils/matching_util.py`: `can_infer_option`, then `can_infer_text`), which
the HR-Bench authors' own evaluation (DreamMr/HR-Bench, built on VLMEvalKit) and VLMEvalKit's V*
and HR-Bench datasets use when no LLM judge is configured ("exact_matching"):

1. the content of the last `<answer>...</answer>` (an API model's raw reply) and of `\\boxed{...}`;
2. the whole answer is a letter: "B", "(B)", "B.", "[B]", "**B**", "b";
3. a labelled option: "B) the red car", "(B) red car", "B. red car", "B: red car";
4. the whole answer is one option's text ("the red car" for option B "red car", after `normalize_answer`);
5. an explicit statement: "The answer is B", "Answer: (B)", "option C", "the answer is b.";
6. VLMEvalKit's option rule: punctuation `.()[],:;!*#{}` becomes spaces and exactly one option letter
   stands alone as a capital ("I think B is right"); two different ones ("A car, so B") are ambiguous;
7. VLMEvalKit's text rule: exactly one option's text occurs in the answer ("it is the red car"),
   for answers at most twice as long as all option texts together.

Ambiguous or unreadable answers give None (scored wrong), as in VLMEvalKit. Departures, each to avoid a
known false positive of the original: option letters are only the options' own (no "Z" for refusals);
"A" followed by a lower-case word is the article, not option A, and only then makes rule 6 refuse (VLMEvalKit
refuses every answer of more than three words holding "A", "The answer is A" included); rules 3 and 5 apply only when no *other* option letter stands alone after
them ("(A) and (B)" stays ambiguous); option texts match whole words only ("no" is not in "not").
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from agent_grpo.rewards._text import normalize_answer

__all__ = ["choice_letter", "extract_choice", "options_of"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_BARE_LETTER = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?")
_LABELLED = re.compile(r"[(\[]?([A-Z])(?:[)\]][.:]?|[.:])\s+\S")
_OPTION_LABEL = re.compile(r"^\s*[(\[]?([A-Za-z])(?:[)\]][.:]?|[.:])\s+")
_ANSWER_IS = re.compile(
    r"(?i:answer|option|choice)(?:\s+(?i:is|would be|should be))?\s*[:\-]?\s*"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])(?![A-Za-z])|([a-z])(?=\s*[.!]?\s*$))"
)
_SPLIT_CHARS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})  # VLMEvalKit's can_infer_option


def options_of(choices: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Letter -> option text, from option texts in order (A, B, ...) or a letter -> text mapping.

    A text that carries its own label ("B. the red car" listed as option B) keeps only the text."""
    if choices is None:
        return {}
    if isinstance(choices, Mapping):
        items = [(str(k).strip().strip("()[].").upper(), str(v)) for k, v in choices.items()]
    elif isinstance(choices, Sequence) and not isinstance(choices, str):
        items = list(zip(string.ascii_uppercase, (str(c) for c in choices), strict=False))
    else:
        raise ValueError(f"choices must be a list of option texts or a letter -> text mapping, got {choices!r}")
    out = {}
    for letter, text in items:
        label = _OPTION_LABEL.match(text)
        out[letter] = text[label.end():] if label and label.group(1).upper() == letter else text
    return out


def extract_choice(text: str | None, choices: Sequence[str] | Mapping[str, str] | None = None) -> str | None:
    """The option letter `text` picks (rules in the module docstring), or None if none or ambiguous.

    Without `choices` any letter A-Z is an option and rules 4 and 7 (option texts) do not apply."""
    if not isinstance(text, str):
        return None
    options = options_of(choices)
    letters = "".join(options) if options else string.ascii_uppercase
    found = _extract(_unwrap(text), letters, options)
    return found if found is not None and found in letters else None


def choice_letter(
    prediction: str | None, reference: str, *, choices: Sequence[str] | Mapping[str, str] | None = None
) -> float:
    """1.0 if the prediction picks the reference option (a letter: "B", "(B)"), see `extract_choice`.

    The reference comes from the task row: one that is not an option letter raises ValueError."""
    options = options_of(choices)
    letters = "".join(options) if options else string.ascii_uppercase
    ref = reference.strip() if isinstance(reference, str) else None
    ref_letter = _extract(ref, letters, options) if ref else None
    if ref_letter is None or ref_letter not in letters:
        raise ValueError(f"a multiple-choice reference must be an option letter among {letters!r}, got {reference!r}")
    return float(extract_choice(prediction, choices) == ref_letter)


def _unwrap(text: str) -> str:
    tags = _ANSWER_TAG.findall(text)
    if tags:
        text = tags[-1]
    boxed = _BOXED.findall(text)
    return boxed[-1] if boxed else text


def _extract(text: str, letters: str, options: Mapping[str, str]) -> str | None:
    s = text.strip().strip("*_`'\" ")
    if m := _BARE_LETTER.fullmatch(s):
        return m.group(1).upper()
    if (m := _LABELLED.match(s)) and _standalone(s[m.end(1) + 1:], letters) <= {m.group(1)}:
        return m.group(1)
    if options and (by_text := _text_equal(s, options)):
        return by_text
    if hits := list(_ANSWER_IS.finditer(s)):
        last = hits[-1]
        letter = next(g for g in last.groups() if g).upper()
        if _standalone(s[last.end():], letters) <= {letter}:
            return letter
    lone = _standalone(s, letters)
    if len(lone) == 1 and not _has_article_a(s):  # "A car, so B": VLMEvalKit's guard refuses it too
        return lone.pop()
    if not lone and options:
        return _text_inside(s, options)
    return None


def _words(text: str) -> list[str]:
    return text.translate(_SPLIT_CHARS).split()


def _is_article(words: list[str], i: int) -> bool:
    return words[i] == "A" and i + 1 < len(words) and words[i + 1][:1].islower()


def _standalone(text: str, letters: str) -> set[str]:
    """Option letters standing alone as capitals (VLMEvalKit's split), "A" as an article excepted."""
    words = _words(text)
    return {w for i, w in enumerate(words) if len(w) == 1 and w in letters and not _is_article(words, i)}


def _has_article_a(text: str) -> bool:
    words = _words(text)
    return any(_is_article(words, i) for i in range(len(words)))


def _text_equal(text: str, options: Mapping[str, str]) -> str | None:
    pred = normalize_answer(text)
    hits = [letter for letter, option in options.items() if pred and normalize_answer(option) == pred]
    return hits[0] if len(hits) == 1 else None


def _text_inside(text: str, options: Mapping[str, str]) -> str | None:
    if len(text) > 2 * sum(len(o) for o in options.values()):
        return None  # a long reply mentions options in passing (VLMEvalKit's length guard)
    padded = f" {normalize_answer(text)} "
    hits = [letter for letter, option in options.items()
            if (norm := normalize_answer(option)) and f" {norm} " in padded]
    return hits[0] if len(hits) == 1 else None
