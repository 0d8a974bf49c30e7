"""Our processes end without the interpreter's teardown, after their atexit handlers, with every
line written (sparse_rl.process, issue 15)."""

import subprocess
import sys

PRELUDE = ("import atexit, sys\natexit.register(lambda: print('atexit ran', flush=True))\n"
           "print('before', end='')  # left in the buffer: the exit must flush it\n")


def _run(code: str):
    return subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=120)


def test_the_command_ends_with_its_status_after_atexit_and_flushed_output():
    out = _run("sys.argv = ['sparse-rl', '--help']\nfrom sparse_rl.cli import console_main\nconsole_main()\n"
               "print('not reached')")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("before") and "atexit ran" in out.stdout and "not reached" not in out.stdout
    refused = _run("sys.argv = ['sparse-rl', 'nope']\nfrom sparse_rl.cli import console_main\nconsole_main()")
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: command: unknown command")
    assert "atexit ran" in refused.stdout


def test_an_unexpected_exception_still_ends_the_usual_way():
    out = _run("import sparse_rl.cli as c\nc.main = lambda: 1 / 0\nc.console_main()")
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr and "atexit ran" in out.stdout


def test_exit_process_keeps_the_low_byte_of_the_status():
    for status, want in [(0, 0), (75, 75), (130, 130), (256 + 3, 3)]:
        out = _run(f"from sparse_rl.process import exit_process\nexit_process({status})")
        assert out.returncode == want and "atexit ran" in out.stdout
