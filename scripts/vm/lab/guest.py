"""A QEMU guest on a vhost-user NIC, driven through its serial console.

The console is a unix socket (QEMU is the server). A command is typed as

    echo "__BW""S7__"; COMMAND
    echo "__BW""E7__ $?"

and its output is the text between the markers (the quotes split them, so an echoed command line
never matches). `Guest.run()` returns (exit status or None on timeout, output).
"""

import os
import re
import socket
import subprocess
import threading
import time

from .procs import PROCS
from .util import tail


class GuestError(Exception):
    pass


class Guest:
    def __init__(self, name, segment, ip, mac, workdir, cpus=1, queues=1, vectors=0,
                 files=None, sock=None, qmp=False, incoming=None, vhost_server=True, mem="256M"):
        # ip None: eth0 comes up with no address (a DHCP client sets it; then set self.ip).
        self.name, self.segment, self.ip, self.mac = name, segment, ip, mac
        # vCPUs, virtio-net queue pairs (QEMU side and the port's `queues`), MSI-X vectors
        # (0 = INTx: QEMU 7.2 segfaults with vhost-user + TCG + MSI-X).
        self.cpus, self.queues, self.vectors = cpus, queues, vectors
        self.mem = mem   # guest RAM (QEMU's -m and the memfd backend's size), e.g. "256M"
        # Live migration: another QEMU of the same guest (same name, so the same kernel command
        # line, which QEMU's migration needs) has files of its own (`files`: their base name,
        # default the guest's name), may sit on another switch's socket (`sock`), has a QMP
        # socket (`qmp`: <files>.qmp) and waits for the guest's state (`incoming`, e.g.
        # "tcp:127.0.0.1:PORT": QEMU's -incoming).
        self.files = files or name
        self.label = name if self.files == name else f"{name} ({self.files})"   # in messages
        self.sock = sock or os.path.join(workdir, f"{name}.sock")        # vhost-user (QEMU listens)
        self.ser_sock = os.path.join(workdir, f"{self.files}.console")   # serial console (QEMU listens)
        self.serial_log = os.path.join(workdir, f"{self.files}.serial.log")
        self.qemu_log = os.path.join(workdir, f"{self.files}.qemu.log")
        self.qmp_sock = os.path.join(workdir, f"{self.files}.qmp") if qmp else None
        self.incoming = incoming
        # vhost_server False: QEMU dials a backend that listens on `sock` (e.g. dpdk-testpmd with
        # client=0; a migration's destination dials the same socket) instead of listening.
        self.vhost_server = vhost_server
        self.proc = None
        self.conn = None
        self.buf = ""
        self.cond = threading.Condition()
        self.closed = False
        self.cmd_lock = threading.Lock()
        self.seq = 0
        self.t_start = None
        self.boot_secs = None
        self.t_netup = None
        self.up = False

    def start(self, image, accel):
        # Multiqueue: the netdev asks the backend for `queues` pairs (GET_QUEUE_NUM must answer
        # at least that many) and the device offers VIRTIO_NET_F_MQ to the guest.
        netdev, device = "vhost-user,id=n0,chardev=c0", f"virtio-net-pci,netdev=n0,mac={self.mac},romfile="
        if self.queues > 1:
            netdev += f",queues={self.queues}"
            device += ",mq=on"
        device += f",vectors={self.vectors}"
        argv = [
            "qemu-system-x86_64", "-name", self.name, "-accel", accel, "-machine", "pc",
            "-smp", str(self.cpus), "-m", self.mem,
            "-object", f"memory-backend-memfd,id=mem,size={self.mem},share=on", "-numa", "node,memdev=mem",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", f"socket,id=ser0,path={self.ser_sock},server=on,wait=off,logfile={self.serial_log}",
            "-serial", "chardev:ser0",
            "-kernel", image["kernel"], "-initrd", image["initrd"],
            "-append", f"console=ttyS0 panic=-1 quiet loglevel=3 "
                       + (f"bw.ip={self.ip}/24 " if self.ip else "") + f"bw.hostname={self.name}",
            "-chardev", f"socket,id=c0,path={self.sock}" + (",server=on,wait=off" if self.vhost_server else ""),
            "-netdev", netdev,
            "-device", device,
        ]
        if accel == "kvm":
            argv += ["-cpu", "host"]
        if self.qmp_sock:
            argv += ["-qmp", f"unix:{self.qmp_sock},server=on,wait=off"]
        if self.incoming:
            argv += ["-incoming", self.incoming]
        mine = ((self.sock,) if self.vhost_server else ()) + (self.ser_sock,) + ((self.qmp_sock,) if self.qmp_sock else ())
        for p in mine:
            if os.path.exists(p):
                os.unlink(p)
        self.t_start = time.monotonic()
        self.proc = PROCS.spawn(self.files, argv, self.qemu_log)

    def connect_console(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError(f"{self.label}: QEMU exited with status {self.proc.returncode}\n"
                                 + tail(self.qemu_log))
            if os.path.exists(self.ser_sock):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(self.ser_sock)
                    self.conn = s
                    threading.Thread(target=self._reader, daemon=True).start()
                    return
                except OSError as e:
                    last = e
                    s.close()
            time.sleep(0.05)
        raise GuestError(f"{self.label}: cannot connect to serial console {self.ser_sock}: {last}")

    def _reader(self):
        while True:
            try:
                data = self.conn.recv(65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.closed = True
                    self.cond.notify_all()
                    return
                self.buf += data.decode("utf-8", "replace").replace("\r", "")
                if self.t_netup is None and "BW-NET-UP" in self.buf:
                    self.t_netup = time.monotonic()
                self.cond.notify_all()

    def wait_for(self, regex, timeout, start=0):
        """Wait until regex matches the console output after position start."""
        pat = re.compile(regex)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = pat.search(self.buf, start)
                if m:
                    return m
                if self.closed or (self.proc and self.proc.poll() is not None):
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.5))

    def wait_boot(self, timeout):
        m = self.wait_for(r"BW-NET-(UP|FAIL)[^\n]*\n", timeout)
        if m and m.group(1) == "UP":
            self.boot_secs = (self.t_netup or time.monotonic()) - self.t_start
            # Synchronise with the shell (it may start a moment after the marker).
            rc, _ = self.run("stty -echo; true", timeout=30)
            self.up = rc == 0
            if not self.up:
                raise GuestError(f"{self.label}: shell on the console did not answer")
            return True
        if m:
            raise GuestError(f"{self.label}: {m.group(0).strip()}")
        if self.closed:
            # The console closes as QEMU dies: give the process a moment to be reaped.
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is not None:
            raise GuestError(f"{self.label}: QEMU exited with status {self.proc.returncode}:\n"
                             + tail(self.qemu_log))
        raise GuestError(f"{self.label}: no BW-NET-UP within {timeout:.0f} s")

    def run(self, cmd, timeout=60.0):
        """Run one shell command line in the guest; return (exit status or None, output)."""
        if "\n" in cmd:
            raise ValueError("one line only")
        with self.cmd_lock:
            self.seq += 1
            n = self.seq
            with self.cond:
                start = len(self.buf)
            # The marker words are split by "" so that an echoed command line never matches.
            line = f'echo "__BW""S{n}__"; {cmd}\necho "__BW""E{n}__ $?"\n'
            try:
                self.conn.sendall(line.encode())
            except OSError as e:
                return None, f"<console write failed: {e}>"
            m = self.wait_for(rf"__BWE{n}__ (\d+)\n", timeout, start)
            with self.cond:
                text = self.buf[start:]
            s = text.find(f"__BWS{n}__\n")
            if not m:
                try:
                    self.conn.sendall(b"\x03\n")  # interrupt whatever hangs
                except OSError:
                    pass
                out = text[s + len(f"__BWS{n}__\n"):] if s >= 0 else text
                return None, out
            out = self.buf[start:m.start()]
            s = out.find(f"__BWS{n}__\n")
            if s >= 0:
                out = out[s + len(f"__BWS{n}__\n"):]
            return int(m.group(1)), out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

