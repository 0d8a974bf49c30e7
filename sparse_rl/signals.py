"""SIGTERM as an interrupt: a scheduler that stops a job (SLURM, Kubernetes, `kill`) sends SIGTERM,
often to every process of the job at once; `sparse-rl` and the sweep's workers treat it like
Ctrl-C, so runs stop resumable instead of dying mid-step or being recorded as failed."""

import signal
import threading


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def interrupt_on_sigterm():
    """SIGTERM raises KeyboardInterrupt from now on (main thread only). Returns the handlers to
    restore (`restore_signals`), or None when not on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, handler) for sig, handler in
            ((signal.SIGTERM, raise_interrupt), (signal.SIGINT, signal.getsignal(signal.SIGINT)))}


def restore_signals(handlers, finished: bool) -> None:
    """Put the signal handlers back; in the `sparse-rl` process itself (`finished`), ignore
    SIGINT and SIGTERM instead: a signal landing after the command has finished must not replace
    its exit status (and message) with a bare 130."""
    if handlers is None:
        return
    for sig, handler in handlers.items():
        signal.signal(sig, signal.SIG_IGN if finished else handler)
