"""How our own processes (`sparse-rl ...`, sweep workers) end: without the interpreter's teardown.

After a command's last file is written, Python's finalization (freeing every module and object)
and XLA's destructors still take about 0.2 s (measured on a 2-core VM, issue 15: a 300-step DQN
run, 1.83 s -> 1.63 s), which a user waits for at every run and every sweep worker. Nothing in
it matters once the command is done: the run directory is complete and closed. So the process
runs its atexit handlers (logging, W&B, Ray and tensorboard writers register theirs there),
flushes the standard streams and ends at once. Only a status returned by a command ends this way;
an unexpected exception still propagates as usual (its traceback, then a normal exit).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def exit_process(status: int) -> NoReturn:
    """End this process with `status`, after its atexit handlers and with its streams flushed."""
    try:
        atexit._run_exitfuncs()  # what a normal exit runs first; the teardown after it is skipped
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to write
                pass
        os._exit(int(status) & 0xFF)
