# SPDX-License-Identifier: GPL-2.0
"""Module churn: cycles of modprobe / inflate / deflate / rmmod of the Rust stack, then a
kmemleak scan (kmemleak forgot what boot left, see conftest).

Each cycle is one test case, so the count of cycles that passed is the count of cases that
passed.  Cycles vary how they end: deflate then `rmmod` the balloon driver first, deflate
then `rmmod` the transport first (which removes the balloon's device under it), or `rmmod`
with the balloon still inflated (the driver deflates at unbind).  After every cycle no module
is left, `MemTotal` is back to its value before the cycles and QEMU's `actual` is 0.
"""

import os

import pytest

import balloon as b
import stress_lib as s

RAM = s.RAM
CYCLES = int(os.environ.get("VIRTIO_RS_STRESS_CYCLES", "100"))
INFLATE = 16 * b.MiB
# What the first test learns, for the others.
base = {}


def test_baseline(guest):
    """The balloon function is given to the Rust transport for all cycles."""
    g = guest
    base["bdf"] = bdf = g.balloon_bdf()
    g.sh(f"d=/sys/bus/pci/devices/{bdf}; echo virtio_pci_rs > $d/driver_override; "
         f"if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi; ! [ -e $d/driver ]")
    mem = b.meminfo(g)
    base["MemTotal"] = mem["MemTotal"]
    base["MemAvailable"] = mem["MemAvailable"]
    assert b.actual(g) == RAM


def bring_up(g, bdf):
    g.sh(f"""
        modprobe virtio_balloon_rs && modprobe virtio_pci_rs || exit 1
        [ -e /sys/bus/pci/devices/{bdf}/driver ] || echo {bdf} > /sys/bus/pci/drivers_probe
        for i in $(seq 600); do
            [ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ] && exit 0
            sleep 0.1
        done
        echo "the balloon did not bind"; exit 1
    """, timeout=120)


@pytest.mark.parametrize("n", range(CYCLES))
def test_cycle(guest, n):
    g = guest
    assert base, "test_baseline did not run"
    variant = n % 3
    bring_up(g, base["bdf"])
    b.set_target(g, RAM - INFLATE)
    s.wait_actual(g, RAM - INFLATE)
    st = s.status(g)
    assert st["pages_held"] == INFLATE // 4096, st
    assert base["MemTotal"] - b.meminfo(g)["MemTotal"] == INFLATE // 1024
    if variant in (0, 1):
        b.set_target(g, RAM)
        s.wait_actual(g, RAM)
        assert s.status(g)["pages_held"] == 0
    if variant == 1:
        # The transport goes first: the balloon's device disappears under its driver.
        g.sh("rmmod virtio_pci_rs")
    s.rmmod_all(g)
    if variant == 2:
        # The driver deflated at unbind; the device's target is still the old one.
        assert b.actual(g) == RAM
        b.set_target(g, RAM)
    assert b.meminfo(g)["MemTotal"] == base["MemTotal"]
    assert b.actual(g) == RAM


def test_no_memory_lost(guest):
    """After all the cycles the guest has the memory it had before them: `MemTotal`
    exactly, `MemAvailable` within 32 MiB (KASAN's quarantine of freed slab objects and
    kmemleak's metadata move it; a balloon leaked every cycle would show as 1.6 GiB, every
    other cycle as 800 MiB)."""
    assert base, "test_baseline did not run"
    assert not s.loaded_rs_modules(guest)
    mem = b.meminfo(guest)
    assert mem["MemTotal"] == base["MemTotal"]
    assert mem["MemAvailable"] > base["MemAvailable"] - 32 * 1024, (base, mem)


def test_kmemleak_after_cycles(guest):
    """No unreferenced object (since boot: this covers the KUnit and fault tests too)."""
    assert base, "test_baseline did not run"
    report = s.kmemleak_report(guest)
    assert report.strip() == "", "kmemleak found leaks:\n" + report
