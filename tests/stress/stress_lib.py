# SPDX-License-Identifier: GPL-2.0
"""Helpers the stress tests share."""

import os
import time

import balloon as b
import vm

RAM = 1024 * b.MiB
MODULES = ("virtio_balloon_rs", "virtio_pci_rs", "virtio_ring_rs")
STATUS = "/sys/kernel/debug/virtio_balloon_rs/balloon.*/status"
FAULT = "/sys/kernel/debug/virtio_ring_rs/fault"
KMEMLEAK = "/sys/kernel/debug/kmemleak"

ROOT_PORT = "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1"
# Legacy only; behind a PCIe port QEMU would turn legacy off unless told.
# (QMP's device_add wants JSON types: booleans for bool properties, strings for OnOffAuto.)
BALLOON_PROPS = {"id": "balloon0", "bus": "rp0", "disable-modern": True,
                 "disable-legacy": "off"}
BALLOON = "virtio-balloon-pci,id=balloon0,bus=rp0,disable-modern=on,disable-legacy=off"


def status(g):
    """The Rust balloon's debugfs status as a dict of ints."""
    out = g.sh(f"cat {STATUS}")
    return {k: int(v, 0) for k, v in (line.split() for line in out.splitlines())}


def loaded_rs_modules(g):
    return [l.split()[0] for l in g.sh("cat /proc/modules").splitlines()
            if l.split()[0] in MODULES]


def rmmod_all(g):
    """Unload the three modules (those loaded), in dependency order; they must go."""
    g.sh("for m in virtio_balloon_rs virtio_pci_rs virtio_ring_rs; do "
         "grep -q \"^$m \" /proc/modules && rmmod $m; done; true", timeout=300)
    left = loaded_rs_modules(g)
    assert not left, f"modules still loaded: {left}"


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


def balloon_present(g):
    names = [p["name"] for p in g.qmp_cmd("qom-list", path="/machine/peripheral")]
    return "balloon0" in names


def wait_device_gone(g, timeout=300):
    """Wait until QEMU finished unplugging the balloon (the guest ejected it)."""
    t0 = time.monotonic()
    while balloon_present(g):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"balloon0 still present {timeout}s after device_del")
        time.sleep(0.2)
    return time.monotonic() - t0


def unplug(g):
    """device_del and wait until the guest ejected the function; returns the seconds."""
    g.qmp_cmd("device_del", id="balloon0")
    return wait_device_gone(g)


def plug(g, **extra):
    """device_add the legacy balloon behind the root port (with `extra` properties); waits
    until a driver in the guest took it."""
    props = dict(BALLOON_PROPS, **extra)
    g.qmp_cmd("device_add", driver="virtio-balloon-pci", **props)
    deadline = time.monotonic() + 180
    while True:
        out = g.sh("for d in /sys/bus/pci/devices/*; do "
                   "[ \"$(cat $d/vendor):$(cat $d/device)\" = 0x1af4:0x1002 ] && "
                   "[ -e $d/driver ] && basename $d; done; true")
        if out.split():
            return
        assert time.monotonic() < deadline, "the guest did not take the plugged device"
        time.sleep(0.5)


def replug(g, **extra):
    """Plug a fresh balloon with `extra` properties in place of the current one."""
    rmmod_all(g)
    if balloon_present(g):
        unplug(g)
    plug(g, **extra)


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
    g.seq += 1
    n = g.seq
    tmp = os.path.join(g.dir, f".cmd.{n}")
    with open(tmp, "w") as f:
        f.write(script + "\n")
    os.rename(tmp, os.path.join(g.dir, f"cmd.{n}"))
    return n


def finish(g, n, timeout=120):
    """Wait for command `n`; returns (rc, output)."""
    rc_path = os.path.join(g.dir, f"rc.{n}")
    deadline = time.monotonic() + timeout
    while not os.path.exists(rc_path):
        if g.proc.poll() is not None:
            raise vm.GuestError("guest died:\n" + g.console_tail())
        if time.monotonic() > deadline:
            raise vm.GuestError(f"guest command {n} timed out after {timeout}s")
        time.sleep(0.02)
    with open(rc_path) as f:
        rc = int(f.read().strip() or "255")
    with open(os.path.join(g.dir, f"out.{n}"), errors="replace") as f:
        return rc, f.read()


def wait_file(g, path, n, timeout=120):
    """Wait until the guest created `path`, or command `n` ended (then fails with its
    output)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if os.path.exists(os.path.join(g.dir, f"rc.{n}")):
            rc, out = finish(g, n)
            raise AssertionError(f"the guest script ended (rc {rc}) before "
                                 f"{os.path.basename(path)}:\n{out}")
        if g.proc.poll() is not None:
            raise vm.GuestError("guest died:\n" + g.console_tail())
        if time.monotonic() > deadline:
            raise AssertionError(f"no {os.path.basename(path)} after {timeout}s")
        time.sleep(0.02)
