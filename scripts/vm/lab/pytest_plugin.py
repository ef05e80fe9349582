"""The report of the VM tests: one PASS/FAIL line per test, then `N passed, M failed`.

tests/vm/conftest.py registers `VmSession` (the options come from lab.options). It

* creates the workdir when the session starts (--workdir, or a fresh temporary directory) and, at
  the end, stops every process the lab started (PROCS.stop_all), prints the total time and removes
  the workdir after a fully green run (unless --keep or --workdir was given);
* prints `PASS: <title> [<file>::<test>] (<secs>s): <details>` when a test passes and `FAIL: ...`
  with the message when it fails. The title is the first line of the test's docstring; the details
  are what the test gave its `report` fixture (`Report` below);
* counts honestly: a test passes only if its setup and its call passed. A failed setup (a fixture
  that raised: a guest that did not start, a missing package), a skip, a failed collection, a
  teardown that failed, an interruption (Ctrl-C, SIGTERM), or a run that selected no test count
  as failures. `record()` adds a result that is not a test (e.g. a guest found dead at the end).

scripts/vmtest prints the closing `N passed, M failed` itself (it sets WRAPPED); a plain
`pytest tests/vm` run gets it from pytest_unconfigure here.
"""

import os
import shutil
import tempfile
import time
import traceback

import pytest

from .guest import GuestError
from .options import OPTIONS, dest
from .procs import PROCS, Terminated
from .util import log

WRAPPED = False     # scripts/vmtest prints the final line
CURRENT = None      # the VmSession of this process (the wrapper reads its counts)


def addoption(parser):
    group = parser.getgroup("vmtest", "bulwark VM test")
    for flags, kw in OPTIONS:
        group.addoption(*flags, dest=dest(flags), **kw)


class Report:
    """What a test found, line by line (the `report` fixture). A check that fails marks the test
    failed, but the test goes on, so that its report shows every check:

        report.note("vm4 port running")              # a detail line
        report.check(rc == 0, f"ping exit {rc}")     # a detail line that must be true
        report.verdict()                             # fail now if any check failed

    verdict(ok, details) takes a whole result at once: details is a list of lines or one string.
    A test that returns with a failed check fails even without verdict()."""

    def __init__(self):
        self.lines = []
        self.ok = True
        self.raised = False

    def note(self, line):
        self.lines.append(str(line))

    def check(self, ok, line):
        self.lines.append(str(line))
        self.ok &= bool(ok)
        return bool(ok)

    def verdict(self, ok=True, details=()):
        self.lines.extend([details] if isinstance(details, str) else [str(d) for d in details])
        self.ok &= bool(ok)
        if not self.ok:
            self.raised = True
            pytest.fail(self.text(), pytrace=False)

    def text(self):
        if not self.lines:
            return ""
        if len(self.lines) == 1:
            return self.lines[0]
        return "\n  " + "\n  ".join(self.lines)


def _title(item):
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    title = doc.strip().splitlines()[0].strip() if doc and doc.strip() else item.name
    cs = getattr(item, "callspec", None)
    return f"{title} [{cs.id}]" if cs is not None and doc else title


def _is_pytest(filename):
    return any(f"{os.sep}{m}{os.sep}" in filename for m in ("_pytest", "pluggy"))


def _describe(excinfo, rep=None):
    """The failure message of an exception, as the report shows it."""
    e = excinfo.value
    before = rep.text() if rep is not None and rep.lines and not rep.raised else ""
    if isinstance(e, GuestError):
        msg = str(e)
    elif isinstance(e, (pytest.fail.Exception, pytest.skip.Exception)):
        msg = e.msg
    elif isinstance(e, AssertionError):
        entry = excinfo.traceback[-1]
        msg = f"assertion failed at {os.path.basename(str(entry.path))}:{entry.lineno + 1}: " + \
            str(e).replace("\n", "\n    ")
    else:  # a harness bug must not hide the other tests
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None and _is_pytest(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next  # from the test (or fixture) on
        msg = "harness error: " + "".join(traceback.format_exception(type(e), e, tb)).strip()
    return (before + "\n  " + msg) if before else msg


class VmSession:
    def __init__(self, config):
        global CURRENT
        CURRENT = self
        self.config = config
        o = config.option
        o.bulwarkd = os.path.abspath(o.bulwarkd)
        o.bulwarkctl = os.path.abspath(o.bulwarkctl)
        self.opts = o
        self.workdir = None
        self.user_workdir = o.workdir is not None
        self.started = False
        self.passed = 0
        self.failed = 0
        self.ran = 0
        self.interrupted = None
        self.setup_errors = {}   # message -> the first test that had it
        self.t0 = time.monotonic()

    # -- results ---------------------------------------------------------------------------
    def record(self, name, ok, detail=""):
        """A result that is not a test of its own (it counts like one)."""
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        log(f"{'PASS' if ok else 'FAIL'}: {name}" + (f": {detail}" if detail else ""))

    # -- session ---------------------------------------------------------------------------
    def pytest_sessionstart(self, session):
        self.started = True
        self.t0 = time.monotonic()
        if self.user_workdir:
            os.makedirs(self.opts.workdir, exist_ok=True)
            self.workdir = os.path.abspath(self.opts.workdir)
        else:
            self.workdir = tempfile.mkdtemp(prefix="bulwark-vmtest.")
        log(f"vmtest: switch={self.opts.switch} workdir={self.workdir}")

    def pytest_collectreport(self, report):
        if report.failed:
            self.record(f"collect {report.nodeid or '.'}", False, report.longreprtext.strip()[-3000:])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        r = item.funcargs.get("report") if call.when == "call" else None
        if not isinstance(r, Report):
            r = None
        if call.when == "call" and rep.passed and r is not None and not r.ok:
            rep.outcome = "failed"
            rep.longrepr = r.text()
        if rep.passed:
            detail = r.text() if r is not None else ""
        elif rep.skipped and isinstance(rep.longrepr, tuple):
            detail = str(rep.longrepr[2])
        elif call.excinfo is not None:
            detail = _describe(call.excinfo, r)
        else:
            detail = r.text() if r is not None else str(rep.longrepr)
        rep.bw_title = _title(item)
        rep.bw_detail = detail

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_teststatus(self, report, config):
        # Keep pytest's categories but not its progress letters: the PASS/FAIL lines say it all.
        outcome = yield
        res = outcome.get_result()
        if res and config.option.verbose <= 0:
            outcome.force_result((res[0], "", res[2]))

    def pytest_runtest_logreport(self, report):
        title = getattr(report, "bw_title", report.nodeid)
        detail = getattr(report, "bw_detail", "")
        where = f"[{report.nodeid}]"
        secs = f"({report.duration:.1f}s)"
        if report.when == "setup" and not report.passed:
            self.ran += 1
            self.failed += 1
            if report.skipped:
                log(f"SKIP: {title} {where}: {detail} (counted as failed: no VM test is optional)")
                return
            first = self.setup_errors.get(detail)
            if first is None:
                self.setup_errors[detail] = report.nodeid
                log(f"FAIL: {title} {where} (setup): {detail}")
            else:
                log(f"FAIL: {title} {where} (setup): the same error as {first} above")
        elif report.when == "call":
            self.ran += 1
            if report.passed:
                self.passed += 1
                log(f"PASS: {title} {where} {secs}" + (f": {detail}" if detail else ""))
            elif report.skipped:
                self.failed += 1
                log(f"SKIP: {title} {where} {secs}: {detail} (counted as failed: no VM test is optional)")
            else:
                self.failed += 1
                log(f"FAIL: {title} {where} {secs}" + (f": {detail}" if detail else ""))
        elif report.when == "teardown" and report.failed:
            self.failed += 1
            log(f"FAIL: teardown after {title} {where}: {detail}")

    def pytest_keyboard_interrupt(self, excinfo):
        e = excinfo.value
        self.interrupted = str(e) if isinstance(e, Terminated) else "Ctrl-C"

    def pytest_internalerror(self, excrepr, excinfo):
        self.record("pytest internal error", False, str(excrepr).strip()[-2000:])

    @pytest.hookimpl(trylast=True)   # after the runner tore the fixtures down
    def pytest_sessionfinish(self, session, exitstatus):
        if self.interrupted:
            self.record("interrupted", False, self.interrupted)
        elif self.ran == 0 and self.failed == 0 and not self.config.option.collectonly:
            self.record("no tests ran", False, "nothing was selected (check -k and the paths)")
        if self.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_unconfigure(self, config):
        if not self.started:
            return
        PROCS.stop_all()
        keep = self.opts.keep or self.user_workdir or self.failed > 0
        log(f"total time {time.monotonic() - self.t0:.0f} s")
        if keep:
            log(f"workdir (logs): {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            log(f"workdir {self.workdir} removed (use --keep to keep it)")
        if not WRAPPED:
            log(f"{self.passed} passed, {self.failed} failed")
