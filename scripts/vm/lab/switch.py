"""The switches a test topology can run: bulwarkd (the product) and, as a developer check of the
harness itself, dpdk-testpmd forwarding between two vhost-user ports."""

import http.client
import json
import os
import re
import socket
import subprocess
import time

from .guest import GuestError
from .procs import PROCS
from .util import API_READY_TIMEOUT, tail


def toml_value(v):
    """A config value as TOML: a string, a bool, an int, a list of them, or a dict of them (an
    inline table, e.g. a port's `policy`; its keys are bare keys)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    return json.dumps(str(v))  # a TOML basic string is a JSON string for what the lab writes


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket (bulwarkd's api.sock)."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


class Port:
    """A switch port with no guest of ours behind it (e.g. an uplink that `pktgen wire` joins to
    another switch's): what Bulwarkd's config needs of a Guest."""

    def __init__(self, name, sock, segment, queues=1):
        self.name, self.sock, self.segment, self.queues = name, sock, segment, queues


class Bulwarkd:
    kind = "bulwarkd"

    def __init__(self, bin, ctl, workdir, guests, workers=(1,), tag="", tags=None, ports=None,
                 idle_sleep_us=100):
        """Writes bulwarkd{tag}.toml with one client-mode port per guest (or Port); start()
        starts the process. tag names a second instance's files: bulwarkd{tag}.toml, run{tag}/,
        bulwarkd{tag}.N.log.
        tags: {guest name: {key: value}}, the vNICs' tags in the config (the policy document's
        selectors read them; `bulwarkctl port tags` changes them at run time).
        ports: {guest name: {key: value}}, more keys of its [[ports]] entry (str, bool, int, or a
        list of str), e.g. {"spoof_guard": "strict", "mac": "52:54:...", "dhcp_server": True};
        "mode": "server" makes bulwarkd listen on that port's socket."""
        self.bin, self.ctl = bin, ctl
        self.workdir = workdir
        self.tag = tag
        self.run_dir = os.path.join(workdir, f"run{tag}")
        self.config = os.path.join(workdir, f"bulwarkd{tag}.toml")
        self.proc = None
        self.starts = 0
        self.log = None
        self.t_start = self.t_start_wall = None
        self.guests, self.workers, self.tags = list(guests), tuple(workers), dict(tags or {})
        self.idle_sleep_us = idle_sleep_us
        self.ports = {n: dict(kv) for n, kv in (ports or {}).items()}
        os.makedirs(self.run_dir, exist_ok=True)
        self.write_config()

    def write_config(self):
        lines = ["[switch]", f"workers = [{', '.join(str(w) for w in self.workers)}]",
                 f"idle_sleep_us = {self.idle_sleep_us}", "mac_aging_secs = 300", ""]
        for g in self.guests:
            kv = dict(self.ports.get(g.name) or {})
            mode = kv.pop("mode", "client")
            lines += ["[[ports]]", f'name = "{g.name}"', f'socket = "{g.sock}"', f'mode = "{mode}"',
                      f"segment = {g.segment}"] + ([f"queues = {g.queues}"] if g.queues > 1 else [])
            t = self.tags.get(g.name)
            if t:
                lines.append("tags = { " + ", ".join(f'{k} = "{v}"' for k, v in t.items()) + " }")
            lines += [f"{k} = {toml_value(v)}" for k, v in kv.items()]
            lines.append("")
        with open(self.config, "w") as f:
            f.write("\n".join(lines))

    def configure_port(self, name, **keys):
        """Sets keys of port `name`'s [[ports]] entry in the config file (a value None removes the
        key) and rewrites the file: the next start() reads it (a running bulwarkd does not), e.g.
        configure_port("vm1", policy={...}) so that a restarted bulwarkd has the policy that
        `bulwarkctl policy set` gave the running one (an API-set policy of a config-file port is
        not persisted)."""
        kv = self.ports.setdefault(name, {})
        for k, v in keys.items():
            if v is None:
                kv.pop(k, None)
            else:
                kv[k] = v
        self.write_config()

    def start(self):
        self.log = os.path.join(self.workdir, f"bulwarkd{self.tag}.{self.starts}.log")
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.t_start_wall = time.time()
        self.proc = PROCS.spawn("bulwarkd", [self.bin, "--run-dir", self.run_dir, "--config", self.config],
                                self.log, env=env)
        self.t_start = time.monotonic()
        return self.proc

    def api_get(self, path, timeout=1.0):
        """GET path from the API socket directly (no bulwarkctl process: cheap enough to poll every
        few ms); the parsed JSON body. OSError (e.g. ConnectionRefusedError while no process
        listens on api.sock yet), or GuestError for a status other than 200 or a body that is
        not JSON."""
        c = _UnixHTTPConnection(os.path.join(self.run_dir, "api.sock"), timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
        except http.client.HTTPException as e:
            raise OSError(f"GET {path}: {e!r}")
        finally:
            c.close()
        if r.status != 200:
            raise GuestError(f"GET {path}: status {r.status}: {body[:300]!r}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise GuestError(f"GET {path}: not JSON ({e}): {body[:300]!r}")

    def ctl_cmd(self, *a, json_out=False, timeout=10):
        argv = [self.ctl, "--run-dir", self.run_dir] + (["--json"] if json_out else []) + list(a)
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"timed out after {timeout} s: {' '.join(argv)}"
        return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")

    def wait_ready(self, timeout=API_READY_TIMEOUT):
        """True when api.sock exists and `bulwarkctl ports` works; raises if bulwarkd died."""
        deadline = time.monotonic() + timeout
        api = os.path.join(self.run_dir, "api.sock")
        err = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError(f"bulwarkd exited with status {self.proc.returncode}:\n" + tail(self.log))
            if os.path.exists(api):
                rc, _, err = self.ctl_cmd("ports")
                if rc == 0:
                    return True, time.monotonic() - self.t_start
            time.sleep(0.2)
        return False, f"api.sock={'present' if os.path.exists(api) else 'missing'}; last bulwarkctl error: {err.strip()[-300:]}"

    def ctl_json(self, *a):
        """`bulwarkctl --json ARGS` parsed; GuestError when it fails or is not JSON."""
        rc, out, err = self.ctl_cmd(*a, json_out=True)
        if rc != 0:
            raise GuestError(f"`bulwarkctl --json {' '.join(a)}` exited {rc}: {(err or out).strip()[-500:]}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise GuestError(f"`bulwarkctl --json {' '.join(a)}` output is not JSON ({e}): {out[:300]!r}")

    def ports_json(self):
        """`bulwarkctl --json ports` (GET /v1/ports) as a list."""
        return self.ctl_json("ports")

    def port_json(self, name):
        """`bulwarkctl --json port show NAME` (GET /v1/ports/NAME) as a dict."""
        p = self.ctl_json("port", "show", name)
        if not isinstance(p, dict):
            raise GuestError(f"`bulwarkctl --json port show {name}`: expected an object, got {str(p)[:300]!r}")
        return p

    def snapshot(self, tag):
        """Save bulwarkctl outputs into the workdir for later debugging (best effort)."""
        for what in ("ports", "macs", "stats"):
            rc, out, err = self.ctl_cmd(what)
            with open(os.path.join(self.workdir, f"ctl-{tag}-{what}.txt"), "w") as f:
                f.write(f"# exit {rc}\n{out}{err}")


class Wire:
    """`pktgen wire`: a cable between two switches' ports (each switch listens: its port has
    mode "server"), forwarding every frame both ways. Its counters go to wire{tag}.N.log every 5 s."""

    kind = "pktgen wire"

    def __init__(self, pktgen, workdir, sock_a, sock_b, nap_us=100, tag=""):
        self.pktgen, self.workdir, self.sock_a, self.sock_b = pktgen, workdir, sock_a, sock_b
        self.nap_us, self.tag = nap_us, tag
        self.proc = None
        self.starts = 0
        self.log = None

    def start(self, timeout=15.0):
        """Starts it once both sockets exist; waits until it says both sides are up."""
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(p) for p in (self.sock_a, self.sock_b)):
            if time.monotonic() > deadline:
                raise GuestError(f"pktgen wire: switch sockets missing after {timeout:.0f} s: "
                                 + ", ".join(p for p in (self.sock_a, self.sock_b) if not os.path.exists(p)))
            time.sleep(0.1)
        self.log = os.path.join(self.workdir, f"wire{self.tag}.{self.starts}.log")
        self.starts += 1
        self.proc = PROCS.spawn("pktgen-wire", [self.pktgen, "wire", "--dial", self.sock_a, "--peer-dial",
                                                self.sock_b, "--nap-us", str(self.nap_us)], self.log)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError(f"pktgen wire exited with status {self.proc.returncode}:\n" + tail(self.log))
            with open(self.log, "rb") as f:
                if b"both sides up" in f.read():
                    return
            time.sleep(0.1)
        raise GuestError(f"pktgen wire: sides not up within {timeout:.0f} s:\n" + tail(self.log))

    def counters(self):
        """The last counters it printed: {"a_to_b", "b_to_a", "dropped"} (empty before its first report)."""
        try:
            with open(self.log, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return {}
        m = None
        for m in re.finditer(r"a_to_b (\d+) b_to_a (\d+) dropped (\d+)", text):
            pass
        return dict(zip(("a_to_b", "b_to_a", "dropped"), map(int, m.groups()))) if m else {}


class Testpmd:
    kind = "testpmd"

    def __init__(self, workdir, guests):
        self.workdir = workdir
        self.guests = guests
        self.proc = None
        self.starts = 0
        self.log = None

    def start(self):
        self.log = os.path.join(self.workdir, f"testpmd.{self.starts}.log")
        argv = ["dpdk-testpmd", "-l", "0,1", "--no-pci", "--no-huge", "-m", "256",
                "--file-prefix", f"bwvmtest{os.getpid()}-{self.starts}"]
        for i, g in enumerate(self.guests):
            argv += ["--vdev", f"net_vhost{i},iface={g.sock},queues=1,client=1"]
        argv += ["--", "--forward-mode=io", "--nb-cores=1", "--total-num-mbufs=8192", "--stats-period=2"]
        self.starts += 1
        self.proc = PROCS.spawn("testpmd", argv, self.log)
        self.t_start = time.monotonic()
        return self.proc

    def wait_ready(self, timeout=API_READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError(f"testpmd exited with status {self.proc.returncode}:\n" + tail(self.log))
            try:
                with open(self.log, "rb") as f:
                    if b"start packet forwarding" in f.read():
                        return True, time.monotonic() - self.t_start
            except OSError:
                pass
            time.sleep(0.2)
        return True, time.monotonic() - self.t_start

