"""A topology: one switch and the guests on its ports, started and stopped together (by PID).

The host (2 cores, TCG) runs one topology at a time: `Machine.start()` stops the running ones first.
"""

import re

from .guest import GuestError
from .procs import PROCS
from .util import BOOT_TIMEOUT, PING_WAIT_TRIES, indent, parallel, ping_wait_cmd, tail


class Topology:
    def __init__(self, name, sw, guests, end_check="all"):
        """end_check: which guests must still be running when the topology is stopped:
        "all" of them, or only those that "booted"."""
        self.name, self.sw, self.guests = name, sw, list(guests)
        self.by = {g.name: g for g in self.guests}
        self.end_check = end_check
        self.started = False
        self.stopped = False
        self.died = []          # (guest name, message): guests found dead when the topology stopped
        self._boot = None

    def start(self, image, accel):
        """Switch first (its client ports dial the QEMU sockets with backoff until they appear), then
        the guests; connects their consoles. Returns sw.wait_ready(): (True, secs) or (False, why).
        Raises GuestError when a guest or the switch dies."""
        self.started = True
        self.sw.start()
        for g in self.guests:
            g.start(image, accel)
        for g in self.guests:
            g.connect_console()
        return self.sw.wait_ready()

    def boot(self, timeout=BOOT_TIMEOUT):
        """Wait, once, until every guest printed BW-NET-UP; [(guest, True or the exception)]."""
        if self._boot is None:
            res = parallel([lambda g=g: g.wait_boot(timeout) for g in self.guests])
            self._boot = list(zip(self.guests, res))
        return self._boot

    def need(self, *names):
        """Raise GuestError unless the named guests (default: all) booted and still run."""
        if self.stopped:
            raise GuestError(f"topology {self.name} was stopped (another topology took the machine): "
                             "its guests are gone")
        self.boot()
        for n in names or [g.name for g in self.guests]:
            g = self.by[n]
            if not g.up:
                raise GuestError(f"{n} did not boot")
            if not g.alive():
                raise GuestError(f"{n}: QEMU is gone (status {g.proc.returncode})\n" + tail(g.qemu_log))

    def ping_ok(self, src, dst, tries=PING_WAIT_TRIES):
        """Ping src -> dst (names) with retries until it answers; (ok, message)."""
        by = self.by
        rc, out = by[src].run(ping_wait_cmd(by[dst].ip, tries), timeout=tries * 3 + 30)
        m = re.search(r"tries=(\d+)", out)
        tries = m.group(1) if m else "?"
        rtt = re.search(r"time=([\d.]+ ?ms)", out)
        if rc == 0:
            return True, f"{src}->{dst} ok (try {tries}, rtt {rtt.group(1) if rtt else '?'})"
        return False, f"{src}->{dst} FAILED (rc={rc}, {tries} tries):" + indent(out, 6)

    def stop(self):
        """Stop the guests, then the switch, by PID (idempotent). First notes in `died` each guest
        that should still be running but is not."""
        if self.stopped:
            return
        self.stopped = True
        if not self.started:
            return
        for g in self.guests:
            if (self.end_check == "all" or g.up) and not g.alive():
                self.died.append((g.name, f"QEMU exited with status "
                                  f"{g.proc.returncode if g.proc else 'never started'}\n" + tail(g.qemu_log)))
        for g in self.guests:
            if g.proc is not None:
                PROCS.stop(g.proc)
        if self.sw.proc is not None:
            PROCS.stop(self.sw.proc)


class Machine:
    """The host: one topology runs at a time (TCG guests and busy-polling workers on 2 cores)."""

    def __init__(self):
        self.topologies = []

    def start(self, topo, image, accel):
        for t in self.topologies:
            t.stop()
        self.topologies.append(topo)
        return topo.start(image, accel)

    def stop_all(self):
        for t in self.topologies:
            t.stop()
