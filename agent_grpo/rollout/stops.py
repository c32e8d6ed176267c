"""Where a sampled turn ends: the earliest stop token or stop string, the stop kept.

Both engines cut their raw output with `cut_at_stops`, so they agree token for token on where a turn
ends whatever their own stopping machinery did (HF's eos ids, vLLM's stop ids and stop strings).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence


def cut_at_stops(
    token_ids: Sequence[int],
    stop_token_ids: Collection[int],
    stop_strings: Sequence[str],
    decode: Callable[[Sequence[int]], str],
) -> tuple[list[int], bool]:
    """(the ids up to and including the one that completes the earliest stop, whether a stop was found).

    A stop string counts at the first token whose decoded prefix contains it; a stop token at its own
    position; whichever comes first wins. Without a stop the ids come back whole.
    """
    ids = list(token_ids)
    first_token = next((j for j, t in enumerate(ids) if t in stop_token_ids), None)
    end = len(ids) if first_token is None else first_token + 1
    first_text = _first_stop_text(ids[:end], stop_strings, decode) if stop_strings else None
    found = [j for j in (first_token, first_text) if j is not None]
    if not found:
        return ids, False
    return ids[: min(found) + 1], True


def _first_stop_text(ids: list[int], stop_strings: Sequence[str], decode) -> int | None:
    """Index of the token that completes the first stop string, by binary search over prefixes.

    "The decoded prefix contains a stop" only turns true as the prefix grows, so O(log n) decodes do.
    """

    def hit(j: int) -> bool:
        text = decode(ids[: j + 1])
        return any(s in text for s in stop_strings)

    if not ids or not hit(len(ids) - 1):
        return None
    lo, hi = 0, len(ids) - 1  # hi always hits
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
