"""Progress of a training loop: a live bar on a terminal, plain log lines everywhere else.

A rich progress bar drawn into a pipe, a log file or a batch job's output shows nothing until the run
ends, so there (and with `--no-progress`) the loop prints one line every `log_every` steps instead:

    GRPO step 3/10 | reward 0.52 acc 0.50 calls 1.2 | 0:00:41 elapsed, 0:01:36 left

Steps are numbered from 1, like metrics.jsonl, checkpoints and stored trajectories.
"""

from __future__ import annotations

import time
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    """`with StepProgress("GRPO", total, completed, console) as progress: ... progress.update(step, info)`."""

    def __init__(self, label: str, total: int, completed: int, console: Console, bar: bool = True,
                 log_every: int = 1, enabled: bool = True):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.label, self.total, self.first = label, total, completed
        self.console = console
        self.log_every = log_every
        self.enabled = enabled  # False on the other processes of a distributed run
        self.live = enabled and bar and console.is_terminal
        self._bar: Progress | None = None
        self._start = time.perf_counter()

    def __enter__(self) -> StepProgress:
        self._start = time.perf_counter()
        if self.live:
            columns = [TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.first, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, info: str = "") -> None:
        """Step `step` (1-based) is done."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.enabled and (step % self.log_every == 0 or step == self.total):
            self.console.print(self.line(step, info), markup=False, highlight=False, soft_wrap=True)

    def line(self, step: int, info: str = "") -> str:
        elapsed = time.perf_counter() - self._start
        done = step - self.first
        left = elapsed / done * (self.total - step) if done > 0 else None
        timing = f"{_clock(elapsed)} elapsed" + (f", {_clock(left)} left" if left is not None else "")
        return " | ".join(part for part in (f"{self.label} step {step}/{self.total}", info, timing) if part)

    def print(self, text: str) -> None:
        """A message (e.g. a warning) that does not break the bar."""
        (self._bar.console if self._bar is not None else self.console).print(text)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
