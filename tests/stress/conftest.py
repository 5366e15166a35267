# SPDX-License-Identifier: GPL-2.0
"""Fixtures of the stress tests (`make stress`): guests of the debug kernel flavour that load
the fault flavour of the modules (production code plus the test-only fault switch of
virtio_ring_rs), with the hung-task detector armed.

Every test that uses a guest also fails when the kernel logged a warning, BUG, Oops, KASAN,
lockdep, hung-task or kmemleak report while it ran.
"""

import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import vm  # noqa: E402

# Boots of the KASAN kernel under TCG on a shared 2-core machine are slow.
BOOT_TIMEOUT = int(os.environ.get("VIRTIO_RS_STRESS_BOOT_TIMEOUT", "600"))
# A task blocked this long is reported (and fails the test): low, so that a deadlock shows
# within a test instead of after it.
HUNG_TASK_SECS = 10


def moddir():
    d = os.environ.get("VIRTIO_RS_STRESS_MODDIR")
    if not d or not os.path.exists(os.path.join(d, "virtio_ring_rs.ko")):
        raise RuntimeError("VIRTIO_RS_STRESS_MODDIR must name the fault-flavour .ko files "
                           "(scripts/stress builds them)")
    return d


@pytest.fixture(scope="module")
def guest(request):
    """A guest shared by the tests of one file (boots are slow under TCG)."""
    opts = dict(getattr(request.module, "GUEST_OPTIONS", {}))
    opts.setdefault("boot_timeout", BOOT_TIMEOUT)
    g = vm.Guest("stress-" + request.module.__name__.split(".")[-1], moddir=moddir(), **opts)
    try:
        g.start()
        g.sh(f"echo {HUNG_TASK_SECS} > /proc/sys/kernel/hung_task_timeout_secs; "
             "echo 1 > /proc/sys/kernel/hung_task_all_cpu_backtrace 2>/dev/null; "
             f"[ $(cat /proc/sys/kernel/hung_task_timeout_secs) = {HUNG_TASK_SECS} ]")
        yield g
    finally:
        g.cleanup()


@pytest.fixture(autouse=True)
def no_kernel_problems(request):
    """Fail the test if the kernel complained while it ran."""
    g = request.getfixturevalue("guest") if "guest" in request.fixturenames else None
    if g is not None:
        g.new_kernel_log()
    yield
    if g is not None:
        problems = g.kernel_problems()
        if problems:
            pytest.fail("kernel problems during the test:\n" + "\n".join(problems))


def pytest_configure(config):
    """Tell scripts/stress who to interrupt when the time budget is long gone."""
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
