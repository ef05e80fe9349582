"""bulwarkd (or testpmd) restarted under running guests on `net`: traffic resumes, the guests are
not restarted.

Runs after test_firewall (conftest AREAS), which leaves allow-all policies behind, so this tests the
restart, not the firewall. Each test restarts the switch with the same config and run dir; the
next test finds the restarted one."""

import os
import re
import signal
import subprocess
import time

import pytest

from lab import PROCS, RESTART_DEADLINE, Bulwarkd, indent, ping_wait_cmd, tail


@pytest.fixture(scope="module", autouse=True)
def snapshots(net):
    """bulwarkctl ports/macs/stats into the workdir before the restarts (ctl-before-restart-*)
    and after them (ctl-end-*), for debugging; bulwarkd only."""
    if isinstance(net.sw, Bulwarkd) and net.sw.proc is not None:
        net.sw.snapshot("before-restart")
    yield
    if isinstance(net.sw, Bulwarkd) and not net.stopped:
        net.sw.snapshot("end")


def restart(net, sig, report):
    """Traffic vm1 -> vm2, then sig to the switch, a restart, and a ping that must work within
    RESTART_DEADLINE s of it, with the same QEMU processes."""
    sw, guests, by = net.sw, net.guests, net.by
    net.need("vm1", "vm2")
    pids = {g.name: g.proc.pid for g in guests}
    note = ""
    if sw.proc.poll() is not None:
        # An earlier step left the switch dead: start it so that this test still says something.
        note = f"(note: {sw.kind} had exited with status {sw.proc.returncode} before this test; started it again) "
        sw.start()
        sw.wait_ready()
    # Traffic flows before the restart.
    o, msg = net.ping_ok("vm1", "vm2")
    if not o:
        report.verdict(False, note + "no traffic before the restart: " + msg)
    old = sw.proc
    t_sig = time.monotonic()
    os.kill(old.pid, sig)
    try:
        status = old.wait(timeout=10)
    except subprocess.TimeoutExpired:
        PROCS.stop(old, signal.SIGKILL)
        report.verdict(False, f"{sw.kind} did not exit within 10 s of {signal.Signals(sig).name}\n" + tail(sw.log))
    exit_secs = time.monotonic() - t_sig
    old_log = sw.log
    time.sleep(1.0)
    sw.start()
    t_restart = time.monotonic()
    rc, out = by["vm1"].run(ping_wait_cmd(by["vm2"].ip, tries=int(RESTART_DEADLINE) + 5), timeout=90)
    elapsed = time.monotonic() - t_restart
    m = re.search(r"tries=(\d+)", out)
    alive = sw.proc.poll() is None
    same = all(g.alive() and g.proc.pid == pids[g.name] for g in guests)
    info = note + (f"old {sw.kind} exited (status {status}) {exit_secs:.1f}s after {signal.Signals(sig).name}; "
                   f"restarted; vm1->vm2 ping {'ok' if rc == 0 else 'FAILED'} {elapsed:.1f}s after restart "
                   f"(try {m.group(1) if m else '?'}); guests not restarted: {same}")
    if rc == 0 and elapsed <= RESTART_DEADLINE and same and alive:
        if isinstance(sw, Bulwarkd):
            r = sw.wait_ready(timeout=5)
            info += f"; API ready: {r[0]}"
        report.verdict(True, info)
        return
    extra = []
    if not alive:
        extra.append(f"new {sw.kind} exited with status {sw.proc.returncode}")
    extra.append(f"new {sw.kind} log tail ({os.path.basename(sw.log)}):\n" + tail(sw.log, 30))
    extra.append(f"old {sw.kind} log tail ({os.path.basename(old_log)}):\n" + tail(old_log, 10))
    extra.append("vm1 output:" + indent(out, 8))
    for g in guests[:2]:
        extra.append(f"{g.name} qemu log tail:\n" + tail(g.qemu_log, 8))
    report.verdict(False, info + "\n  " + "\n  ".join(extra))


def test_e1_restart_after_sigkill(net, report):
    """e1. traffic resumes after SIGKILL + restart of the switch"""
    restart(net, signal.SIGKILL, report)


def test_e2_restart_after_sigterm(net, report):
    """e2. traffic resumes after SIGTERM + restart of the switch"""
    restart(net, signal.SIGTERM, report)
