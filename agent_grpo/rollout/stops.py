"""Where a generated turn stops: the earliest stop token or stop string, engine-independent.

Every engine (Hugging Face, vLLM, scripted) cuts its rows with `cut_at_stops`, so they agree on where a
turn ends whatever the tokenizer does with the stop strings. With the real Qwen2.5-VL tokenizer
`</answer>` is three tokens (`</`, `answer`, `>`), so it can only be found in decoded text.

A stop string completed inside a merged token. Byte-level BPE often merges the stop's last characters with
what follows (`</answer>` then `.` is sampled as `</`, `answer`, `>.`). The token that completes the stop is
kept whole: it is what the model sampled, its logprob is the logprob of that whole token, and the trajectory
is token-in/token-out (dropping the token would leave the stop incomplete; re-encoding its first characters
would put a token in the trajectory that was never sampled, with no logprob). The characters of that one
token past the stop are therefore in the trajectory's tokens (and trained on as part of that token, which
is on-policy), but they are not part of the model's message: `text_before_stop` cuts the decoded turn at
the end of the stop, and the rollout driver hands only that text to the environment (parsing, rewards).
Nothing after the completing token is ever kept.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence


def cut_at_stops(
    token_ids: Sequence[int],
    stop_token_ids: Collection[int],
    stop_strings: Sequence[str],
    decode: Callable[[Sequence[int]], str],
) -> tuple[list[int], bool]:
    """The ids up to and including the earliest stop, and whether a stop was found.

    The earliest stop is the first stop token or the token whose decoded prefix first contains one of
    `stop_strings`, whichever comes first; it is kept. `decode(ids)` must render special tokens as text
    (e.g. `tokenizer.decode(ids, skip_special_tokens=False)`). Without a stop every id is returned.
    """
    if any(not s for s in stop_strings):
        raise ValueError(f"stop strings must be non-empty, got {list(stop_strings)!r}")
    ids = list(token_ids)
    first_token = next((j for j, t in enumerate(ids) if t in stop_token_ids), None)
    # A stop string can only win if it is complete by the first stop token (included).
    searched = ids if first_token is None else ids[: first_token + 1]
    j = _first_stop_string_token(searched, stop_strings, decode) if stop_strings else None
    if j is not None:
        return ids[: j + 1], True
    if first_token is not None:
        return ids[: first_token + 1], True
    return ids, False


def earliest_stop_string(text: str, stop_strings: Sequence[str]) -> tuple[int, str] | None:
    """(start, stop) of the stop string that occurs first in `text` (the longer one on a tie), or None."""
    found = [(text.find(s), -len(s), s) for s in stop_strings if s and s in text]
    if not found:
        return None
    start, _, stop = min(found)
    return start, stop


def text_before_stop(text: str, stop: str | None) -> str:
    """`text` cut right after the first occurrence of `stop` (the rest of a merged token is not message text)."""
    if not stop or stop not in text:
        return text
    return text[: text.index(stop) + len(stop)]


def _first_stop_string_token(ids: list[int], stop_strings: Sequence[str], decode) -> int | None:
    """Index of the token that completes the earliest stop string, in O(log n) decodes.

    "The decoded prefix contains a stop string" only turns true as the prefix grows (appending tokens never
    changes earlier text, except an unfinished UTF-8 character at the very end, which an ASCII stop never
    contains), so the first prefix that contains one is found by bisection.
    """

    def hit(j: int) -> bool:
        text = decode(ids[: j + 1])
        return any(s in text for s in stop_strings)

    if not ids or not hit(len(ids) - 1):
        return None
    lo, hi = 0, len(ids) - 1  # hit(hi) always holds
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
