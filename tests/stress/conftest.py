# SPDX-License-Identifier: GPL-2.0
"""Fixtures of the stress tests (`make stress`).

One guest for the whole run: a boot of the debug kernel (KASAN, lockdep, kmemleak, debug
objects) under TCG takes minutes, so every stress test shares it, in a fixed order (KUnit,
fault injection into the ring, failed allocations in every probe, module churn, hot-unplug,
memory storms, the final kmemleak scan).  The guest
(q35, as virtme-ng starts it) has QEMU's legacy balloon behind a PCIe root port, which QEMU
hot-plugs through ACPI: the hot-unplug tests take it away and plug it back, and the storm
tests plug it back with deflate-on-oom=on.  The modules come from the fault flavour
(production code plus the test-only fault switch of virtio_ring_rs); the KUnit flavour is
loaded from its own directory by the KUnit tests.

The hung-task detector is armed at 10 s, kmemleak forgets what boot left, and every test
fails when the kernel logged a warning, BUG, Oops, KASAN, lockdep, hung-task or kmemleak
report while it ran.

When the guest's QEMU has died (for any reason), the next test gets a fresh guest, prepared
the same way, instead of the corpse; the test during which it died fails.  Only when QEMU
itself aborted on an internal assertion (``vm.QEMU_ASSERTION``: QEMU's bug, e.g. TCG's
``iotlb_to_section: Assertion `section_index < d->map.sections_nb' failed`` racing a
hot-unplug) is that test run once more, on the fresh guest, and the run says so
(``pytest_runtest_protocol`` and the "QEMU aborts" summary below); the rerun's result is the
test's result.
"""

import os
import signal
import sys
import time

import pytest
from _pytest.runner import runtestprotocol

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import balloon as b  # noqa: E402
import vm  # noqa: E402
from fixtures import no_kernel_problems, sort_by_file  # noqa: E402,F401

# Boots of the debug kernel under TCG on a shared 2-core machine are slow (5-10 min seen).
BOOT_TIMEOUT = int(os.environ.get("VIRTIO_RS_STRESS_BOOT_TIMEOUT", "900"))
# A task blocked this long is reported (and fails the test): low, so that a deadlock shows
# within a test instead of after it.
HUNG_TASK_SECS = 10

# The order of the test files (pytest would sort them by name).
ORDER = ["test_kunit", "test_fault", "test_probe_faults", "test_cycles", "test_hotunplug",
         "test_storms", "test_kmemleak"]


def env_dir(var, what):
    d = os.environ.get(var)
    if not d or not os.path.exists(os.path.join(d, "virtio_ring_rs.ko")):
        raise RuntimeError(f"{var} must name the {what} .ko files (scripts/stress builds them)")
    return d


def pytest_collection_modifyitems(session, config, items):
    sort_by_file(items, ORDER)


def pytest_configure(config):
    """Tell scripts/stress who to interrupt when the time budget is long gone."""
    # scripts/stress starts pytest in the background, where a non-interactive shell ignores
    # SIGINT, and Python keeps an ignored SIGINT ignored: the interrupt must raise
    # KeyboardInterrupt, so that the fixtures shut the guest down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pidfile = os.environ.get("VIRTIO_RS_STRESS_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")


def pytest_runtest_setup(item):
    """A test that would start after the time budget of `make stress` fails (not skipped:
    it did not pass)."""
    deadline = os.environ.get("VIRTIO_RS_STRESS_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.fail("the time budget of make stress ran out before this test", pytrace=False)


def boot(moddir):
    g = vm.Guest("stress", memory="1G", devices=(b.ROOT_PORT, b.BALLOON), moddir=moddir,
                 boot_timeout=BOOT_TIMEOUT, append=("lockdep.prove_locking=0",))
    t0 = time.monotonic()
    try:
        g.start()
    except vm.GuestError:
        g.cleanup()
        raise
    print(f"\nguest booted in {time.monotonic() - t0:.0f}s")
    return g


def prepared_guest(moddir):
    """A booted guest, armed for the stress tests."""
    try:
        g = boot(moddir)
    except vm.GuestError as e:
        # virtme-init gives up when udev has not settled in 120 s, which a debug kernel under
        # TCG on a loaded machine sometimes needs: the guest powers off during boot.  One
        # more try (a guest that does not answer at all is not retried).
        if "exited during boot" not in str(e):
            raise
        print(f"\nthe guest exited during boot; booting again:\n{e}")
        g = boot(moddir)
    try:
        # Lockdep validates from here on: everything the modules do (they are not loaded yet)
        # and every lock they meet; only the boot of the rest of the kernel went unchecked,
        # which halves the time udev needs to settle under TCG.
        g.sh("echo 1 > /sys/module/lockdep/parameters/prove_locking && "
             "[ $(cat /sys/module/lockdep/parameters/prove_locking) = 1 ]")
        g.sh(f"echo {HUNG_TASK_SECS} > /proc/sys/kernel/hung_task_timeout_secs; "
             f"[ $(cat /proc/sys/kernel/hung_task_timeout_secs) = {HUNG_TASK_SECS} ]")
        g.sh(f"echo scan > {vm.KMEMLEAK} && echo clear > {vm.KMEMLEAK}", timeout=900)
    except BaseException:
        g.cleanup()
        raise
    return g


def death_notice(g):
    """Why the guest's QEMU died, for the log: its exit status and the console's last lines
    (QEMU's stderr is there)."""
    rc = g.proc.returncode if g.proc is not None else None
    tail = g.console_tail(30) or "(none: QEMU said nothing, e.g. it was killed)\n"
    return (f"the shared guest's QEMU has died (vng exit status {rc}); the last console "
            f"lines:\n{tail}")


class SharedGuest:
    """The one guest of the run, booted again when its QEMU has died."""

    def __init__(self, moddir):
        self.moddir = moddir
        self.current = None
        self.boots = 0

    def get(self):
        g = self.current
        if g is not None and g.exited():
            print("\n" + "=" * 78 + "\n" + death_notice(g) + "\nbooting a fresh guest for "
                  "the remaining tests\n" + "=" * 78)
            g.cleanup()
            self.current = None
        if self.current is None:
            self.current = prepared_guest(self.moddir)
            self.boots += 1
        return self.current

    def cleanup(self):
        if self.current is not None:
            self.current.cleanup()
            self.current = None


@pytest.fixture(scope="session")
def shared_guest():
    shared = SharedGuest(env_dir("VIRTIO_RS_STRESS_MODDIR", "fault-flavour"))
    try:
        shared.get()
        yield shared
    finally:
        shared.cleanup()


@pytest.fixture
def guest(request, shared_guest):
    """The shared guest (a fresh one when QEMU died during an earlier test)."""
    g = shared_guest.get()
    request.node.stash[GUEST_KEY] = g
    return g


# The guest a test got, so that pytest_runtest_protocol can ask whether its QEMU aborted.
GUEST_KEY = pytest.StashKey()
# (test, QEMU's assertion, the rerun's outcome) of every test rerun after a QEMU abort.
RERUNS = []


def qemu_abort_during(item, reports):
    """QEMU's assertion when the test failed and its guest's QEMU aborted on one, else None."""
    if not any(r.failed for r in reports):
        return None
    g = item.stash.get(GUEST_KEY, None)
    if g is None or not g.exited():
        return None
    return g.qemu_assertion()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """A test during which QEMU aborted on its own assertion runs once more (on the fresh
    guest the `guest` fixture boots), said loudly; its first attempt is shown but not
    reported, the rerun's result is the test's."""
    if not str(item.path).startswith(HERE):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    why = qemu_abort_during(item, reports)
    if why is not None:
        tr = item.config.pluginmanager.get_plugin("terminalreporter")
        first = "\n".join(r.longreprtext for r in reports if r.failed)
        line = f"QEMU aborted ({why}) during {item.nodeid}: rerun on a fresh guest"
        tr.write_line("")
        tr.write_sep("!", "QEMU abort", red=True, bold=True)
        tr.write_line(line, red=True, bold=True)
        tr.write_line(f"the first attempt failed with:\n{first}")
        tr.write_sep("!", red=True, bold=True)
        item.user_properties.append(("rerun_after_qemu_abort", why))
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        outcome = "failed" if any(r.failed for r in reports) else "passed"
        RERUNS.append((item.nodeid, why, outcome))
        tr.write_line(f"QEMU abort rerun of {item.nodeid}: {outcome}", red=True, bold=True)
    for r in reports:
        item.ihook.pytest_runtest_logreport(report=r)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(terminalreporter):
    """The reruns after QEMU aborts (scripts/stress repeats the RERUN lines in its summary)."""
    if not RERUNS:
        return
    tr = terminalreporter
    tr.write_sep("=", f"QEMU aborts: {len(RERUNS)} test(s) rerun on a fresh guest",
                 red=True, bold=True)
    for nodeid, why, outcome in RERUNS:
        tr.write_line(f"RERUN stress {nodeid}: QEMU aborted ({why}); the rerun {outcome}")
