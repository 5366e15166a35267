# SPDX-License-Identifier: GPL-2.0
"""Helpers the stress tests share."""

import os
import time

import balloon as b
import vm
# The balloon plumbing lives in tests/lib/balloon.py, shared with the integration tests.
from balloon import (BALLOON, BALLOON_PROPS, MODULES, ROOT_PORT, STATUS,  # noqa: F401
                     balloon_present, loaded_rs_modules, plug, replug, rmmod_all, status,
                     unplug, wait_device_gone)

RAM = 1024 * b.MiB
FAULT = "/sys/kernel/debug/virtio_ring_rs/fault"
KMEMLEAK = "/sys/kernel/debug/kmemleak"


def wait_actual(g, size, timeout=300):
    return b.wait_actual(g, size, timeout=timeout)


def alive(g):
    """The guest still runs commands."""
    assert g.sh("echo alive", timeout=60).strip() == "alive"


def count(lines, needle):
    return sum(1 for l in lines if needle in l)


def excerpt(lines, n=150):
    """The kernel log from the first problem line on (a whole lockdep or KASAN report)."""
    for i, line in enumerate(lines):
        if vm.KERNEL_PROBLEMS.search(line):
            return "\n".join(lines[i:i + n])
    return ""


def take_log(g):
    """New kernel log lines; fails on any kernel problem among them (the autouse check only
    sees the lines nobody took)."""
    lines = g.new_kernel_log()
    problems = g.kernel_problems(lines)
    assert not problems, ("kernel problems:\n" + "\n".join(problems)
                          + "\n\nthe kernel log from the first one:\n" + excerpt(lines))
    return lines


def kmemleak_report(g):
    """kmemleak reports objects older than 5 s: wait, scan twice (a transient false positive
    does not survive two scans), and read the report."""
    g.sh(f"sleep 6; echo scan > {KMEMLEAK}; sleep 2; echo scan > {KMEMLEAK}", timeout=900)
    return g.sh(f"cat {KMEMLEAK}")


# --- commands that run while the host acts --------------------------------------------------
# The guest agent (tests/lib/guest-agent.sh) runs $dir/cmd.N and writes out.N, then rc.N;
# Guest.run waits for it.  These two halves let the host drive QMP while a guest script runs
# and waits for files the host creates in the shared directory.

def start(g, script):
    """Hand `script` to the guest agent; returns its number for `finish`."""
    return g.submit(script)


def finish(g, n, timeout=120):
    """Wait for command `n`; returns (rc, output)."""
    return g.wait_done(n, timeout)


def wait_file(g, path, n, timeout=120):
    """Wait until the guest created `path`, or command `n` ended (then fails with its
    output)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if g.done_rc(n) is not None:
            rc, out = finish(g, n)
            raise AssertionError(f"the guest script ended (rc {rc}) before "
                                 f"{os.path.basename(path)}:\n{out}")
        if g.proc.poll() is not None:
            raise vm.GuestError("guest died:\n" + g.console_tail())
        if time.monotonic() > deadline:
            raise AssertionError(f"no {os.path.basename(path)} after {timeout}s")
        time.sleep(0.02)
