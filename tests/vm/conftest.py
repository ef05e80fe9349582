"""Fixtures of the VM tests (run them with scripts/vmtest; see scripts/vm/README.md).

The machinery is the library in scripts/vm/lab (Guest, Bulwarkd, Topology, PolicyApi, ...);
this file turns it into fixtures, and orders and selects the test files:

    opts, workdir, record        the options of scripts/vmtest, the run's workdir, extra results
    image, accel                 the guest image (built or checked once) and the QEMU accelerator
    machine, start_topology      one topology at a time; start one and always stop it (by PID)
    net                          bulwarkd + vm1..vm4, booted once for test_l2, test_firewall, test_restart
    bulwarkd, policy             net's bulwarkd; firewall policies and drop counters on it
    report                       a test's detail lines and checks (its PASS/FAIL line)

The files run in the order of AREAS, whatever order pytest found them in: they share `net`,
and some of them rely on what an earlier one did or did not do (see `net`).
"""

import contextlib
import os
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts", "vm"))

import lab  # noqa: E402  (after the path)
from lab import pytest_plugin  # noqa: E402
from lab.util import log  # noqa: E402

# The areas in the order they run; files not listed run after these, then LAST: the files with a
# topology of their own (starting one stops `net`), multiqueue last of all.
AREAS = ["test_l2.py", "test_firewall.py", "test_restart.py"]
LAST = ["test_policy.py", "test_guard.py", "test_migrate.py", "test_multiqueue.py"]

# The shared network: name, segment, ip, mac. vm4 is in the same subnet on purpose: only the
# switch's segments keep it apart.
GUESTS = [
    ("vm1", 10, "10.10.1.1", "52:54:00:00:00:01"),
    ("vm2", 10, "10.10.1.2", "52:54:00:00:00:02"),
    ("vm3", 10, "10.10.1.3", "52:54:00:00:00:03"),
    ("vm4", 20, "10.10.1.4", "52:54:00:00:00:04"),
]


def pytest_addoption(parser):
    pytest_plugin.addoption(parser)


def pytest_configure(config):
    config.addinivalue_line("markers", "bulwarkd: needs bulwarkd (deselected with --switch testpmd)")
    config.addinivalue_line("markers", "multiqueue: the multiqueue tests (--mq-only runs only these)")
    if not config.pluginmanager.has_plugin("bulwark-vmtest"):
        config.pluginmanager.register(pytest_plugin.VmSession(config), "bulwark-vmtest")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        if name in AREAS:
            return (AREAS.index(name), "")
        if name in LAST:
            return (len(AREAS) + 1 + LAST.index(name), "")
        return (len(AREAS), name)

    items.sort(key=rank)  # stable: the tests of one file keep their order
    o = config.option
    drop = []
    if o.switch != "bulwarkd":
        drop += [i for i in items if i.get_closest_marker("bulwarkd")]
    if o.mq_only:
        drop += [i for i in items if not i.get_closest_marker("multiqueue") and i not in drop]
        if o.switch != "bulwarkd":
            pytest_plugin.CURRENT.record("setup: --mq-only", False, "the multiqueue tests need bulwarkd")
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


# -- the run ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def opts(request):
    """The options of scripts/vmtest (--bulwarkd, --bulwarkctl, --switch, --mq-vectors, ...);
    the binaries' paths are absolute."""
    return request.config.option


@pytest.fixture(scope="session")
def workdir():
    """Where the logs, sockets and configs go (kept after a failure; see --keep)."""
    return pytest_plugin.CURRENT.workdir


@pytest.fixture(scope="session")
def record():
    """record(name, ok, detail): a result of its own, e.g. a guest found dead when its topology stopped."""
    return pytest_plugin.CURRENT.record


@pytest.fixture
def report():
    """The test's detail lines and checks: note(line), check(ok, line), verdict(ok, details)."""
    return pytest_plugin.Report()


@pytest.fixture(scope="session")
def image(opts, workdir):
    """The guest image {"kernel", "initrd"}: packages checked, then scripts/vm/build-image.sh (cached).
    Fails every test that boots a guest when something is missing."""
    missing = lab.check_prereqs(opts.switch, opts.bulwarkd, opts.bulwarkctl)
    if missing:
        pytest.fail("prerequisites missing:\n  " + "\n  ".join(missing), pytrace=False)
    if len(os.path.join(workdir, "vm1.console")) > 100:
        pytest.fail(f"workdir: path too long for unix sockets: {workdir}", pytrace=False)
    t = time.monotonic()
    ok, out, img = lab.build_image(opts.image_dir, os.path.join(workdir, "build-image.log"))
    if not ok:
        pytest.fail("build-image: " + out.strip()[-2000:], pytrace=False)
    log(f"image: {out.strip()} ({time.monotonic() - t:.1f}s)")
    return img


@pytest.fixture(scope="session")
def accel(opts):
    """tcg, or kvm when /proc/cpuinfo has vmx/svm and /dev/kvm opens (--accel overrides)."""
    return lab.pick_accel(opts.accel)


# -- topologies ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def machine():
    """The host, which runs one topology at a time; stops them all at the end."""
    m = lab.Machine()
    yield m
    m.stop_all()


@pytest.fixture(scope="session")
def start_topology(machine, image, accel, record):
    """start_topology(topo) -> a context manager: starts the topology (stopping any other one
    first), yields it, and always stops it, by PID, also when a test failed. A guest that had
    died by then is recorded as a failure ("guest vmN still running at the end")."""

    @contextlib.contextmanager
    def run(topo):
        try:
            ready = machine.start(topo, image, accel)
            if ready[0]:
                log(f"{topo.sw.kind} ({topo.name}) ready after {ready[1]:.1f}s")
            else:
                log(f"WARNING: {topo.sw.kind} ({topo.name}) API not ready after "
                    f"{lab.API_READY_TIMEOUT:.0f}s ({ready[1]}); testing anyway")
            yield topo
        finally:
            topo.stop()
            for name, msg in topo.died:
                record(f"guest {name} still running at the end", False, msg)

    return run


@pytest.fixture(scope="session")
def net(opts, workdir, accel, start_topology):
    """bulwarkd (workers = [1]) with vm1, vm2, vm3 on segment 10 and vm4 on segment 20, started
    once for the session and shared by test_l2, test_firewall and test_restart, in that order
    (AREAS). With --switch testpmd: dpdk-testpmd between vm1 and vm2 only.

    The guests are started here but booting is waited for by test_l2's a (net.boot(), once);
    net.need(names) boots first if that test did not run, and raises when a guest is not up.

    What the files leave behind for the next ones:
    * test_l2 runs first: its f reads the counters of the first bulwarkd process, traffic of b and c.
    * test_firewall sets policies on vm1..vm3 and ends (g8) with allow-all policies again; if g8
      did not do that, its module fixture resets them, so test_restart tests the restart, not the
      firewall.
    * test_restart kills and restarts bulwarkd (same config and run dir); the guests keep running.
      Its e3/e4 give vm1 and vm2 filtered policies (also written into bulwarkd.toml, for the
      restarted process) and leave allow-all policies on them again, with the original config.
    * test_multiqueue starts a topology of its own, which stops this one (Machine): a test that
      uses `net` after it fails with "topology net was stopped"."""
    specs = GUESTS if opts.switch == "bulwarkd" else GUESTS[:2]
    guests = [lab.Guest(n, seg, ip, mac, workdir) for n, seg, ip, mac in specs]
    if opts.switch == "bulwarkd":
        sw = lab.Bulwarkd(opts.bulwarkd, opts.bulwarkctl, workdir, guests)
    else:
        sw = lab.Testpmd(workdir, guests)
    log(f"starting {sw.kind}; booting {len(guests)} guests (accel={accel})")
    with start_topology(lab.Topology("net", sw, guests, end_check="all")) as topo:
        yield topo


@pytest.fixture(scope="session")
def bulwarkd(net):
    """The bulwarkd of `net` (lab.Bulwarkd: ctl_cmd, ctl_json, ports_json, port_json, snapshot)."""
    if not isinstance(net.sw, lab.Bulwarkd):
        pytest.fail(f"this test needs bulwarkd, not {net.sw.kind}", pytrace=False)
    return net.sw


@pytest.fixture(scope="session")
def policy(bulwarkd, workdir):
    """Firewall policies on net's bulwarkd: set_policy(port, policy, tag), ctl_json(...), drops(),
    save(tag, obj); lab.delta / lab.fmt_delta compare two drops() snapshots."""
    return lab.PolicyApi(bulwarkd, workdir)
