"""bulwark's VM lab: QEMU guests on vhost-user NICs, the switches they plug into, and the helpers the
VM tests (tests/vm) and the demo (scripts/run) share. Python 3 stdlib only (pytest is not imported here).

    procs     process bookkeeping: everything started is stopped by PID (PROCS), signal handling
    guest     Guest: one QEMU guest driven through its serial console; GuestError
    switch    Bulwarkd (config, configure_port, start, api_get, bulwarkctl), Port, Wire, Testpmd
    qmp       Qmp: QEMU's QMP socket (live migration)
    image     check_prereqs, build_image (scripts/vm/build-image.sh), pick_accel
    topology  Topology (a switch + its guests: start, boot, need, ping_ok, stop), Machine
    policy    PolicyApi (policy set, drop counters), delta, fmt_delta
    traffic   busybox nc and iperf3 from inside the guests
    util      log, indent, tail, parallel, ping_wait_cmd, nonzero, iperf_intervals, timeouts
    options   the command-line options of scripts/vmtest (shared with tests/vm/conftest.py)

`pytest_plugin` (the PASS/FAIL report of the VM tests) is the one module that needs pytest; it is
not imported here.
"""

from .guest import Guest, GuestError
from .image import DEFAULT_IMAGE_DIR, REPO, VM_DIR, build_image, check_prereqs, pick_accel
from .policy import PolicyApi, delta, fmt_delta
from .procs import PROCS, Procs, Terminated, install_signal_handlers
from .qmp import Qmp, QmpError
from .switch import Bulwarkd, Port, Testpmd, Wire
from .topology import Machine, Topology
from .util import (API_READY_TIMEOUT, BOOT_TIMEOUT, PING_WAIT_TRIES, RESTART_DEADLINE, fmt_intervals,
                   indent, iperf_intervals, log, nonzero, parallel, ping_wait_cmd, tail)
