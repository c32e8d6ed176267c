"""Child process of test_crash.py: appends trajectories to a run until it is killed.

    python crash_writer.py RUN_DIR FIRST_STEP tear   # write 3 groups, then tear the 4th mid-line and wait
    python crash_writer.py RUN_DIR FIRST_STEP loop   # append groups forever (killed at a random moment)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replay"))

from scripted_run import TinyEnv, run_group  # noqa: E402

from agent_grpo.store import RunMeta, RunStore  # noqa: E402


def main(run: str, first_step: int, mode: str) -> None:
    env = TinyEnv()
    task = env.load_tasks(n=1)[0]
    store = RunStore.create(run, meta=RunMeta.from_env(env))
    step = first_step
    if mode == "tear":
        for step in range(first_step, first_step + 3):
            store.extend(run_group(env, task, step))
        real_write = os.write

        def torn_write(fd: int, data) -> int:
            if fd == store._fd:  # the record file: write half the line, then hang until killed
                real_write(fd, bytes(data[: len(data) // 2]))
                print("torn", flush=True)
                time.sleep(120)
            return real_write(fd, data)

        os.write = torn_write
        store.append(run_group(env, task, step + 1)[0])
    else:
        # The first group is stored before "writing": the kill then lands mid-stream however slow the
        # machine is to start (each run_group may first boot the tool worker processes).
        store.extend(run_group(env, task, step))
        print("writing", flush=True)
        while True:
            step += 1
            store.extend(run_group(env, task, step))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
