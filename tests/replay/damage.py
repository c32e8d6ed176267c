"""Ways to damage or craft a run directory, for the tests that every replay command survives them.

Each function takes a copy of a run written by `scripted_run.build_run` and damages it in place;
`victim` is a folder next to the run that no command may write into or read from.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

from agent_grpo.store import RunStore


def _lines(run: Path) -> list[bytes]:
    return (run / "trajectories.jsonl").read_bytes().splitlines(keepends=True)


def _write_lines(run: Path, lines: list[bytes]) -> None:
    (run / "trajectories.jsonl").write_bytes(b"".join(lines))


def _shas(run: Path, line: int = 0) -> list[str]:
    """The image hashes of the trajectory on record line `line` (tool crops last)."""
    record = json.loads(_lines(run)[line])
    found = []
    for m in record["trajectory"]["messages"]:
        found += [p["sha256"] for p in m["content"] if p.get("type") == "image"]
    return list(dict.fromkeys(found))


def crop_sha(run: Path) -> str:
    """A tool-result image of the first trajectory (it zooms twice)."""
    return _shas(run)[-1]


def png_file(run: Path, sha: str) -> Path:
    return run / "images" / sha[:2] / f"{sha}.png"


def _replace_sha(run: Path, line: int, new: str) -> None:
    lines = _lines(run)
    old = _shas(run, line)[-1]
    lines[line] = lines[line].replace(old.encode(), new.encode())
    _write_lines(run, lines)


def traversal_sha(run: Path, victim: Path) -> None:
    rel = os.path.relpath(victim / "evil", run / "images" / "xx")
    _replace_sha(run, 0, rel)  # ../../victim/evil: export would write victim/evil.png
    _replace_sha(run, 1, str(victim / "abs_evil"))


def uppercase_sha(run: Path, victim: Path) -> None:
    _replace_sha(run, 0, crop_sha(run).upper())


def truncated_record(run: Path, victim: Path) -> None:
    lines = _lines(run)
    lines[2] = lines[2][: len(lines[2]) // 2] + b"\n"  # later records move: every later index row is stale
    _write_lines(run, lines)


def garbled_record_same_length(run: Path, victim: Path) -> None:
    lines = _lines(run)
    mid = len(lines[3]) // 2
    lines[3] = lines[3][:mid] + b"\"}]\x00" * 5 + lines[3][mid + 20 :]  # the index row still fits exactly
    _write_lines(run, lines)


def swapped_records(run: Path, victim: Path) -> None:
    lines = _lines(run)
    lines[0], lines[5] = lines[5], lines[0]
    _write_lines(run, lines)


def damaged_index(run: Path, victim: Path) -> None:
    rows = (run / "index.jsonl").read_bytes().splitlines(keepends=True)
    rows[1] = b'{"id": "s0-tr' + b"\x00" * 10 + b"\n"
    rows[4], rows[6] = rows[6], rows[4]
    rows[-1] = rows[-1][:30]  # a half-written last row (disk full)
    (run / "index.jsonl").write_bytes(b"".join(rows))


def torn_tail(run: Path, victim: Path) -> None:
    with (run / "trajectories.jsonl").open("ab") as f:
        f.write(_lines(run)[0][:100])


def altered_image(run: Path, victim: Path) -> None:
    path = png_file(run, crop_sha(run))
    image = Image.open(path).convert("RGB")
    image.putpixel((0, 0), (255, 0, 255))
    image.save(path)


def truncated_image(run: Path, victim: Path) -> None:
    path = png_file(run, crop_sha(run))
    path.write_bytes(path.read_bytes()[:60])


def not_an_image(run: Path, victim: Path) -> None:
    png_file(run, crop_sha(run)).write_bytes(b"<html>not a png</html>")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(run: Path, victim: Path) -> None:
    png_file(run, crop_sha(run)).write_bytes(bomb_png(100_000, 100_000))  # PIL: DecompressionBombError


def quiet_png_bomb(run: Path, victim: Path) -> None:
    png_file(run, crop_sha(run)).write_bytes(bomb_png(9000, 9000))  # under PIL's limit, over any stored image


def image_symlink_out(run: Path, victim: Path) -> None:
    path = png_file(run, crop_sha(run))
    secret = victim / "secret.png"
    os.replace(path, secret)
    path.symlink_to(secret)


def images_dir_symlink_out(run: Path, victim: Path) -> None:
    sha = crop_sha(run)
    folder = run / "images" / sha[:2]
    os.replace(folder, victim / "moved")
    folder.symlink_to(victim / "moved", target_is_directory=True)


def damaged_meta(run: Path, victim: Path) -> None:
    (run / "meta.json").write_text('{"schema_version": "x"')


def no_index(run: Path, victim: Path) -> None:
    (run / "index.jsonl").unlink()


DAMAGES = {f.__name__: f for f in (
    traversal_sha, uppercase_sha, truncated_record, garbled_record_same_length, swapped_records, damaged_index,
    torn_tail, altered_image, truncated_image, not_an_image, png_bomb, quiet_png_bomb, image_symlink_out,
    images_dir_symlink_out, damaged_meta, no_index,
)}


def readable_ids(run: Path) -> set[str]:
    return {r.id for r in RunStore.open(run).rows}
