"""A run directory: every trajectory as it completes, crash-safe, with its images as PNG files.

    run/
      meta.json            env, rubric weights, tool versions and schemas, budget   (RunMeta)
      trajectories.jsonl   one StoredRecord a line: the full Trajectory, images by sha256
      index.jsonl          one IndexRow a line: where each record is + what `replay list` filters on
      images/ab/ab12...png content-addressed pixels (ImageStore)
      torn/                torn last lines a writer moved aside when it reopened the run
      superseded/          records a resumed training run redoes (`supersede_from`), moved aside
      .lock                held by the one writer

    with RunStore.create("runs/exp1", meta=RunMeta.from_env(env)) as store:
        store.append(trajectory)
    store = RunStore.open("runs/exp1")
    for traj in store.iter(): ...

Crash safety: images are written first (atomic renames), then the record line (one append), then
its index row. A killed writer loses at most the trajectory it was writing; readers stop before a
torn last line and report it (`torn`).

The records are the truth; the index is only a cache of where each one is. On open every index row
is checked against the records file (it must start where the previous record ended and end at a
newline); a record without a valid row (damaged or half-written index line, stale offsets, a lost
index) is parsed and indexed again, and `read` checks that the record it finds has the row's id
(rebuilding the index from the records if not). A writer rewrites a repaired index atomically.
Size cap (`ImagePolicy`): text is always kept; past `max_bytes` of PNG only one group in
`sample_every` keeps its images (whole groups, chosen by a stable hash of the group id).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from agent_grpo.errors import StoreError
from agent_grpo.paths import is_sha256
from agent_grpo.store import _jsonl
from agent_grpo.store.image_store import ImageStore
from agent_grpo.store.meta import RunMeta
from agent_grpo.store.record import IndexRow, LogprobSummary, StoredRecord, image_parts
from agent_grpo.trajectory import Trajectory

TRAJECTORIES = "trajectories.jsonl"
INDEX = "index.jsonl"
META = "meta.json"
IMAGES = "images"
TORN = "torn"
SUPERSEDED = "superseded"
LOCK = ".lock"


class ImagePolicy(BaseModel):
    """Which trajectories keep their images once a run's images grow large. Text is always kept."""

    max_bytes: int | None = Field(default=8 * 2**30, description="PNG bytes stored before sampling starts; None: no cap")
    sample_every: int = Field(default=10, ge=0, description="past the cap, keep 1 group in N (0: none)")


class RunStore:
    """Reads a run directory; with `create` (or writable=True) also appends to it."""

    def __init__(
        self,
        path: str | Path,
        *,
        writable: bool = False,
        meta: RunMeta | None = None,
        images: ImagePolicy | None = None,
        durable: bool = False,
    ):
        self.path = Path(path)
        self.writable = writable
        self.policy = images or ImagePolicy()
        self.durable = durable
        self.images = ImageStore(self.path / IMAGES, durable=durable)
        self.torn: _jsonl.TornTail | None = None  # a torn last line seen (readers) or moved aside (writers)
        self.corrupt: list[str] = []  # complete lines that are not records (should never happen)
        self.index_notes: list[str] = []  # what was wrong with index.jsonl (it was repaired from the records)
        self.damaged_images: dict[str, str] = {}  # sha256 -> why its stored file could not be used
        self._rows: list[IndexRow] = []
        self._by_id: dict[str, int] = {}
        self._groups: OrderedDict[str, bool] = OrderedDict()  # group id -> keeps its images
        self._lock = threading.Lock()
        self._fd = self._index_fd = self._lock_fd = -1
        if writable:
            self._open_for_writing(meta)
        else:
            if not (self.path / TRAJECTORIES).exists():
                raise StoreError(f"{self.path} is not a run directory (no {TRAJECTORIES})")
            self.torn = _jsonl.torn_tail(self._file)
            self._sync_index()
        self.meta = RunMeta.load(self.path / META) if (self.path / META).exists() else RunMeta()

    @classmethod
    def create(cls, path: str | Path, meta: RunMeta | None = None, **kwargs) -> RunStore:
        """Open a run directory for appending, creating it if needed (an existing run is continued)."""
        return cls(path, writable=True, meta=meta, **kwargs)

    @classmethod
    def open(cls, path: str | Path) -> RunStore:
        """Open a run directory read-only. Safe while a writer is appending to it."""
        return cls(path)

    # ---- writing -------------------------------------------------------------------------------

    def append(self, traj: Trajectory) -> IndexRow:
        """Store one finished trajectory (its images first). Returns its index row."""
        if not self.writable or self._fd < 0:
            raise StoreError(f"{self.path} is read-only or closed; use RunStore.create to append")
        with self._lock:
            if traj.id in self._by_id:
                raise StoreError(f"trajectory id {traj.id!r} is already stored in {self.path}; ids must be unique")
            keep = self._keeps_images(traj.group_id)
            if keep:
                done: set[str] = set()
                for part in image_parts(traj):
                    if part.sha256 not in done:
                        self.images.put(part)
                        done.add(part.sha256)
            record = StoredRecord(images_stored=keep, logprobs=LogprobSummary.of(traj), trajectory=traj)
            data = _jsonl.dumps_line(record)
            offset = self._end
            try:
                _jsonl.append_line(self._fd, data, self.durable)
            except OSError as e:  # e.g. disk full: cut the partial line so the next append starts clean
                os.truncate(self._file, offset)
                raise StoreError(f"could not append trajectory {traj.id} to {self._file}: {e}") from e
            self._end += len(data)
            row = IndexRow.of(record, offset, len(data) - 1)
            self._add_row(row)  # the record is stored: the trajectory is kept whatever happens to its index row
            index_line = _jsonl.dumps_line(row)
            index_end = os.lseek(self._index_fd, 0, os.SEEK_END)
            try:
                _jsonl.append_line(self._index_fd, index_line, self.durable)
            except OSError as e:  # disk full: no half row left behind; the next open indexes the record again
                os.truncate(self.path / INDEX, index_end)
                self.index_notes.append(f"could not write the index row of {traj.id} ({e}); rebuilt from its record on the next open")
            return row

    def extend(self, trajectories: Iterable[Trajectory]) -> None:
        for t in trajectories:
            self.append(t)

    def close(self) -> None:
        for fd in (self._fd, self._index_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)  # closing the lock file releases the flock
        self._fd = self._index_fd = self._lock_fd = -1

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------

    @property
    def rows(self) -> list[IndexRow]:
        """Index rows of every complete trajectory, in the order they were written."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, traj_id: str) -> bool:
        return traj_id in self._by_id

    def row(self, traj_id: str) -> IndexRow:
        if traj_id not in self._by_id:
            raise KeyError(f"no trajectory {traj_id!r} in {self.path}")
        return self._rows[self._by_id[traj_id]]

    def record(self, traj_id: str | IndexRow) -> StoredRecord:
        """The stored record of a trajectory; StoreError if its line is damaged."""
        row = traj_id if isinstance(traj_id, IndexRow) else self.row(traj_id)
        record = self._checked(row)
        if record is None:  # the index pointed at another record: it is stale, the records are the truth
            self.index_notes.append(f"the index row of {row.id} pointed at another record; index rebuilt from the records")
            self._rebuild_index()
            if row.id not in self._by_id:
                raise StoreError(f"trajectory {row.id!r} is in the index of {self.path} but not in its records")
            record = self._checked(self.row(row.id))
            if record is None:
                raise StoreError(f"{self._file}: cannot find the record of trajectory {row.id!r}")
        return record

    def read(self, traj_id: str | IndexRow, images: bool = False) -> Trajectory:
        """One trajectory by id; `images=True` attaches the stored pixels to its image parts."""
        traj = self.record(traj_id).trajectory
        if images:
            self.attach_images(traj)
        return traj

    def iter(self, rows: Iterable[IndexRow] | None = None, images: bool = False,
             skipped: list[str] | None = None) -> Iterator[Trajectory]:
        """Trajectories in write order (or those of `rows`), images attached if asked.

        With a `skipped` list, a damaged record is left out and described there instead of raising."""
        for row in list(self._rows) if rows is None else rows:
            if skipped is None:
                yield self.read(row, images=images)
                continue
            try:
                traj = self.read(row, images=images)
            except (StoreError, KeyError) as e:
                skipped.append(f"{row.id}: {e}")
                continue
            yield traj

    def __iter__(self) -> Iterator[Trajectory]:
        return self.iter()

    def attach_images(self, traj: Trajectory) -> int:
        """Attach stored pixels to every image part of `traj`; returns how many parts have none stored.

        A damaged file (unreadable, wrong pixels, a bomb, a bad hash) counts as not stored and is
        noted in `damaged_images`."""
        missing = 0
        cache = {}
        for part in image_parts(traj):
            if part.has_pixels:
                continue
            if part.sha256 not in cache:
                cache[part.sha256] = self.load_image(part.sha256)
            if cache[part.sha256] is None:
                missing += 1
            else:
                part.attach(cache[part.sha256])
        return missing

    def load_image(self, sha256: str) -> Image.Image | None:
        """The stored pixels of `sha256`, or None when not stored or damaged (noted in `damaged_images`).

        Damaged: not a valid hash, a path that leaves the run (a symlink out), an unreadable file, a
        PNG bomb, or pixels that do not hash to the name."""
        key = sha256 if is_sha256(sha256) else str(sha256)[:80]
        if key in self.damaged_images:
            return None
        try:
            path = self.images.path(sha256)
            if not path.is_file():
                return None  # not stored (size cap): not damage
            return self.images.load(sha256)
        except StoreError as e:
            self.damaged_images[key] = str(e)
            return None

    def problems(self) -> list[str]:
        """What a reader should be told: a torn last line, unreadable lines, a repaired index, damaged images."""
        out = [f"torn: {self.torn.describe()} (the write was interrupted; it is ignored)"] if self.torn else []
        out += [f"corrupt: {c}" for c in self.corrupt]
        out += [f"index: {n}" for n in self.index_notes]
        return out + [f"damaged image {sha[:12]}: {why}" for sha, why in self.damaged_images.items()]

    # ---- resuming a training run ---------------------------------------------------------------

    def supersede_from(self, step: int) -> int:
        """Move the records of steps >= `step` aside (a resumed run redoes them); returns how many.

        Training writes steps in order, so they are the end of `trajectories.jsonl`: those bytes are
        copied to `superseded/trajectories-<time>.jsonl` (and synced) before the file is cut, so
        nothing is lost, and the run then holds each step once, as the resumed run's metrics do."""
        if not self.writable or self._fd < 0:
            raise StoreError(f"{self.path} is read-only or closed; use RunStore.create")
        with self._lock:
            later = [i for i, r in enumerate(self._rows) if r.step is not None and r.step >= step]
            if not later:
                return 0
            first = self._rows[later[0]]
            cut, end = first.offset, _jsonl.complete_size(self._file)
            tail = _jsonl.read_at(self._file, cut, end - cut)
            side = self.path / SUPERSEDED / f"trajectories-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.jsonl"
            side.parent.mkdir(parents=True, exist_ok=True)
            with side.open("xb") as f:
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            keep = [r for r in self._rows[later[0]:] if r.step is None or r.step < step]  # normally none
            kept_lines = [tail[r.offset - cut : r.offset - cut + r.length + 1] for r in keep]
            os.truncate(self._file, cut)
            self._end = cut
            rows = self._rows[: later[0]]
            self._rows, self._by_id = [], {}
            for r in rows:
                self._add_row(r)
            for line in kept_lines:
                _jsonl.append_line(self._fd, line, self.durable)
                self._add_row(self._row_of(line[:-1], self._end))
                self._end += len(line)
            self._write_index()
            return len(later)

    # ---- internals -----------------------------------------------------------------------------

    # ---- internals -----------------------------------------------------------------------------

    @property
    def _file(self) -> Path:
        return self.path / TRAJECTORIES

    def _open_for_writing(self, meta: RunMeta | None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StoreError(f"another process is writing to {self.path}; one writer per run directory") from e
        meta_path = self.path / META
        if not meta_path.exists():
            (meta or RunMeta()).save(meta_path)
        elif meta is not None and meta.env is not None and RunMeta.load(meta_path).env not in (None, meta.env):
            raise StoreError(f"{self.path} holds a run of env {RunMeta.load(meta_path).env!r}, not {meta.env!r}")
        # A crash may have left a torn last line: move it aside so the next line starts clean.
        self.torn = _jsonl.cut_torn_tail(self._file, keep_dir=self.path / TORN)
        _jsonl.cut_torn_tail(self.path / INDEX)  # an index row is rebuilt from its record
        self._fd = _jsonl.open_append(self._file)
        added = self._sync_index()
        if added is None:
            self._write_index()  # damaged or stale: rewritten whole from the records
        else:
            self._index_fd = _jsonl.open_append(self.path / INDEX)
            for row in added:  # records written after the last index row (a crash between the two writes)
                _jsonl.append_line(self._index_fd, _jsonl.dumps_line(row), self.durable)

    def _sync_index(self, use_index: bool = True) -> list[IndexRow] | None:
        """Index every complete record, taking rows from index.jsonl where they check out.

        Returns the rows index.jsonl lacks at its end (normal after a crash), or None when it must be
        rewritten (a damaged line, a stale or misplaced row)."""
        end = _jsonl.complete_size(self._file)
        hints: dict[int, IndexRow] = {}
        order: list[int] = []
        damaged = 0
        if use_index:
            for line in _jsonl.iter_lines(self.path / INDEX):
                try:
                    row = IndexRow.model_validate_json(line.data)
                except ValidationError:
                    damaged += 1
                    continue
                if row.offset >= end:
                    continue  # a record appended since `end` was measured (a live writer): not stale, just newer
                hints.setdefault(row.offset, row)
                order.append(row.offset)
        self._rows, self._by_id = [], {}
        added: list[IndexRow] = []
        used = 0
        in_order = True
        with self._file.open("rb") if self._file.exists() else _Empty() as f:
            pos = 0
            while pos < end:
                hint = hints.get(pos)
                if hint is not None and hint.id not in self._by_id and _ends_line(f, pos, hint.length, end):
                    self._add_row(hint)
                    in_order = in_order and used < len(order) and order[used] == pos
                    used += 1
                    pos += hint.length + 1
                    continue
                f.seek(pos)
                raw = f.readline()
                try:
                    row = self._row_of(raw[:-1], pos)
                except StoreError as e:
                    self.corrupt.append(str(e))
                else:
                    if row.id in self._by_id:
                        self.corrupt.append(f"line at byte {pos} repeats trajectory id {row.id!r}")
                    else:
                        self._add_row(row)
                        added.append(row)
                        in_order = in_order and used == len(order)  # only rows after the last index row
                pos += len(raw)
        self._end = end
        stale = len(order) - used
        if damaged or stale:
            self.index_notes.append(
                f"{damaged} damaged and {stale} stale row(s) in {INDEX}; {len(added)} trajectories indexed from their records"
            )
        elif not in_order:
            self.index_notes.append(f"{INDEX} rows were out of order; rebuilt from the records")
        return added if (in_order and not damaged and not stale) else None

    def _rebuild_index(self) -> None:
        """Index every record by parsing it (the index was found stale), rewriting index.jsonl if writable."""
        self.corrupt = []
        self._sync_index(use_index=False)
        if self.writable:
            self._write_index()

    def _write_index(self) -> None:
        """Replace index.jsonl with the rows in memory (temporary file + rename), reopening it for appends."""
        path = self.path / INDEX
        tmp = path.with_name(INDEX + ".tmp")
        with tmp.open("wb") as f:
            for row in self._rows:
                f.write(_jsonl.dumps_line(row))
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self._index_fd >= 0:
            os.close(self._index_fd)
        self._index_fd = _jsonl.open_append(path)

    def _row_of(self, data: bytes, offset: int) -> IndexRow:
        return IndexRow.of(self._parse(data, offset), offset, len(data))

    def _checked(self, row: IndexRow) -> StoredRecord | None:
        """The record at `row`, or None if the bytes there are another trajectory's (a stale row)."""
        data = _jsonl.read_at(self._file, row.offset, row.length + 1)
        if len(data) != row.length + 1 or not data.endswith(b"\n") or b"\n" in data[:-1]:
            return None
        record = self._parse(data[:-1], row.offset)
        return record if record.trajectory.id == row.id else None

    def _add_row(self, row: IndexRow) -> None:
        self._by_id[row.id] = len(self._rows)
        self._rows.append(row)
        self._groups.setdefault(row.group_id, row.images_stored)

    def _parse(self, data: bytes, offset: int) -> StoredRecord:
        try:
            return StoredRecord.model_validate_json(data)
        except ValidationError as e:
            raise StoreError(f"{self._file}: the line at byte {offset} is not a trajectory record: {e}") from e

    def _keeps_images(self, group_id: str) -> bool:
        # Decided once per group, so a group is shown whole or not at all in reports.
        if group_id not in self._groups:
            cap, every = self.policy.max_bytes, self.policy.sample_every
            under = cap is None or self.images.total_bytes < cap
            sampled = every > 0 and int(hashlib.sha256(group_id.encode()).hexdigest()[:8], 16) % every == 0
            self._groups[group_id] = under or sampled
            while len(self._groups) > 100_000:  # bounded memory on very long runs
                self._groups.popitem(last=False)
        return self._groups[group_id]


class _Empty:
    """Stands in for a missing records file (nothing to read)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _ends_line(f, offset: int, length: int, end: int) -> bool:
    """Whether a line of `length` bytes starting at `offset` ends with a newline before `end`."""
    if length < 0 or offset + length >= end:
        return False
    return os.pread(f.fileno(), 1, offset + length) == b"\n"  # one byte, not a buffer-full
