"""QEMU's QMP (the JSON machine protocol) on a guest's `-qmp unix:PATH,server=on,wait=off` socket:
enough for live migration (migrate, query-migrate, query-status, quit).

    q = Qmp.connect(guest.qmp_sock, timeout=15)     # greeting read, qmp_capabilities sent
    q.cmd("migrate", uri="tcp:127.0.0.1:4444")      # the "return" value; QmpError on "error"
    q.cmd("query-migrate")["status"]
    q.events                                        # asynchronous events seen so far (with the
                                                    # time.monotonic() they were read at)
"""

import json
import socket
import time

from .guest import GuestError


class QmpError(GuestError):
    pass


class Qmp:
    def __init__(self, sock, path):
        self.sock, self.path = sock, path
        self.buf = b""
        self.events = []     # (monotonic time read, event dict)
        self.greeting = None

    @classmethod
    def connect(cls, path, timeout=15.0, alive=None):
        """Connects (retrying until the socket answers or timeout s passed; alive() False ends
        it early: QEMU died), reads the greeting and negotiates capabilities."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(max(1.0, deadline - time.monotonic()))
                s.connect(path)
                break
            except OSError as e:
                s.close()
                last = e
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise QmpError(f"QMP {path}: cannot connect: {last}")
            time.sleep(0.05)
        q = cls(s, path)
        q.greeting = q._read(timeout=max(1.0, deadline - time.monotonic()))
        if "QMP" not in q.greeting:
            raise QmpError(f"QMP {path}: unexpected greeting {q.greeting!r}")
        q.cmd("qmp_capabilities")
        return q

    def _read(self, timeout):
        """One JSON message (a line)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"QMP {self.path}: no answer within {timeout:.0f} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                raise QmpError(f"QMP {self.path}: {e}")
            if not data:
                raise QmpError(f"QMP {self.path}: connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as e:
            raise QmpError(f"QMP {self.path}: not JSON ({e}): {line[:200]!r}")

    def cmd(self, name, timeout=10.0, **args):
        """Executes one command; its "return" value. QmpError on an "error" answer."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QmpError(f"QMP {self.path}: {name}: {e}")
        deadline = time.monotonic() + timeout
        while True:
            r = self._read(max(0.1, deadline - time.monotonic()))
            if "event" in r:
                self.events.append((time.monotonic(), r))
                continue
            if "error" in r:
                e = r["error"]
                raise QmpError(f"QMP {name}: {e.get('class')}: {e.get('desc')}")
            if "return" in r:
                return r["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
