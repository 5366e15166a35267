# SPDX-License-Identifier: GPL-2.0
"""Helpers the stress tests share."""

import time

import balloon as b

MODULES = ("virtio_balloon_rs", "virtio_pci_rs", "virtio_ring_rs")
STATUS = "/sys/kernel/debug/virtio_balloon_rs/balloon.*/status"
FAULT = "/sys/kernel/debug/virtio_ring_rs/fault"


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


def wait_device_gone(g, dev_id="balloon0", timeout=180):
    """Wait until QEMU finished unplugging `dev_id` (the guest ejected it)."""
    t0 = time.monotonic()
    while True:
        names = [p["name"] for p in g.qmp_cmd("qom-list", path="/machine/peripheral")]
        if dev_id not in names:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{dev_id} still present {timeout}s after device_del")
        time.sleep(0.2)
