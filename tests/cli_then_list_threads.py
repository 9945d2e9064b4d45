"""Run the unisrec CLI, then name the gloo threads still alive (the torchrun target of test_distributed).

A finished run must have ended its process group: gloo threads left for the interpreter's exit can abort it.
"""

from __future__ import annotations

import os
import sys

from unisrec.cli import main

if __name__ == "__main__":
    code = main()
    tasks = "/proc/self/task"  # Linux: one folder per thread, its name in ``comm``
    if os.path.isdir(tasks):
        names = []
        for task in sorted(os.listdir(tasks)):
            with open(os.path.join(tasks, task, "comm")) as comm:
                names.append(comm.read().strip())
        left = sorted(name for name in names if "gloo" in name)
        print(f"gloo threads left on rank {os.environ.get('RANK')}: {left}", file=sys.stderr)
    raise SystemExit(code)
