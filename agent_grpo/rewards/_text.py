"""Text normalisation shared by the answer comparisons (`accuracy.py`, `choice.py`)."""

from __future__ import annotations

import re
import unicodedata

_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_APOSTROPHES = re.compile(r"['’`]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")  # every punctuation mark except a decimal point


def normalize_answer(text: str, number_words: bool = True) -> str:
    """Lower-case; drop apostrophes, punctuation (not decimal points), articles; collapse spaces.

    `1,234` becomes `1234`; with `number_words`, `zero`..`twenty` become digits ("seven" == "7").
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _THOUSANDS.sub("", _APOSTROPHES.sub("", text))
    words = [w for w in _PUNCT.sub(" ", text).split() if w not in _ARTICLES]
    if number_words:
        words = [_NUMBER_WORDS.get(w, w) for w in words]
    return " ".join(words)
