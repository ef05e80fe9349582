"""Process bookkeeping: everything the lab starts is recorded by PID and stopped by PID.

`PROCS.stop_all()` runs at exit (atexit), and the harness calls it on every way out. The children
also get PR_SET_PDEATHSIG=SIGKILL, so they die even if the harness itself is SIGKILLed.
Nothing is ever killed by name.
"""

import atexit
import ctypes
import os
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _child_setup():
    # Die with the harness even if it is SIGKILLed (spawned from the main thread only).
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Procs:
    def __init__(self):
        self.procs = []  # (name, Popen)

    def spawn(self, name, argv, logpath, **kw):
        logf = open(logpath, "ab")
        logf.write(("# " + " ".join(argv) + "\n").encode())
        logf.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True, preexec_fn=_child_setup, **kw)
        logf.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=5.0):
        """Signal one process by PID and reap it; SIGKILL if it does not exit in time."""
        if p.poll() is not None:
            return p.returncode
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return p.wait()

    def stop_all(self):
        live = [(n, p) for n, p in self.procs if p.poll() is None]
        for _, p in live:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        for _, p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


PROCS = Procs()
atexit.register(PROCS.stop_all)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that pytest stops the run and tears the fixtures down."""

    def __init__(self, signum):
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def _on_signal(signum, _frame):
    raise Terminated(signum)


def install_signal_handlers():
    """Ctrl-C, SIGTERM and SIGHUP end the run through the normal cleanup (fixture teardown, stop_all).
    Also when started from a non-interactive shell with SIGINT ignored ('cmd &')."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
