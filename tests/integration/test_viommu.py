# SPDX-License-Identifier: GPL-2.0
"""The legacy balloon behind a translating vIOMMU (QEMU `intel-iommu` on q35, the guest
booted with `intel_iommu=on iommu.passthrough=0`).

A legacy device cannot negotiate ACCESS_PLATFORM, so QEMU's legacy balloon reads and writes
guest-physical addresses and bypasses the IOMMU, while the guest's DMA API hands out I/O
virtual addresses for the function.  The transport must program guest-physical addresses
(ring PFN, indirect tables) and the balloon must give the device the guest-physical address
of its message and statistics buffers, never a DMA handle.

First the test shows that the setup is the one that matters: the function is in a
translated IOMMU domain, and the DMA handle of each ring really differs from its
guest-physical address (the test flavour's `/sys/kernel/debug/virtio_pci_rs/ring_addrs`),
with the transport having programmed the guest-physical one.  Then a balloon round trip,
guest statistics, unbind with an inflated balloon and rmmod must work with no kernel
problem.  The modules come from the test flavour (`$VIRTIO_RS_KUNIT_DIR`)."""

import os

import balloon as b
import balloon_cases

RAM = 1024 * b.MiB
KUNIT_DIR = os.environ.get("VIRTIO_RS_KUNIT_DIR")
PATH = "/machine/peripheral/balloon0"
RINGS = "/sys/kernel/debug/virtio_pci_rs/ring_addrs"
# The debug kernel (VIRTIO_RS_FLAVOR=debug) has KASAN: its shadow and the debug objects
# leave a 1 GiB guest about 800 MiB, of which the balloon's reserve rule lets it take about
# 450 MiB; and a move takes minutes under TCG.
DEBUG = os.environ.get("VIRTIO_RS_FLAVOR") == "debug"
ROUND_TRIP_TARGET = (768 if DEBUG else 512) * b.MiB
MOVE_S = 600 if DEBUG else 120

GUEST_OPTIONS = {
    # virtme-ng starts TCG guests on q35 already; the IOMMU is one more device.
    "qemu_opts": ("-device", "intel-iommu"),
    "append": ("intel_iommu=on", "iommu.passthrough=0"),
}
if KUNIT_DIR:
    GUEST_OPTIONS["moddir"] = KUNIT_DIR


def rings(g):
    """{queue: (dma, phys, programmed)} of the last find_vqs."""
    out = g.sh(f"cat {RINGS}")
    res = {}
    for line in out.splitlines():
        f = line.split()
        res[int(f[0])] = (int(f[2], 0), int(f[4], 0), int(f[6], 0))
    return res


def test_the_balloon_is_behind_a_translating_iommu(guest):
    assert "DMAR" in guest.sh("dmesg | grep -i dmar | head -50; true"), "no DMAR in the log"
    bdf = guest.balloon_bdf()
    kind = guest.sh(f"cat /sys/bus/pci/devices/{bdf}/iommu_group/type").strip()
    assert kind in ("DMA", "DMA-FQ"), f"the balloon's IOMMU domain is {kind!r}, not translated"


def test_rings_get_guest_physical_addresses_not_dma_handles(guest):
    b.bind_rust(guest)
    rc, _ = guest.run(f"[ -r {RINGS} ]", check=False)
    assert rc == 0, ("no ring_addrs file: the guest runs the production modules; set "
                     "VIRTIO_RS_KUNIT_DIR to the output of scripts/build-flavour kunit")
    r = rings(guest)
    assert sorted(r) == [0, 1, 2], r
    for q, (dma, phys, programmed) in r.items():
        # The IOMMU translates for this function: the DMA handle is an I/O virtual address.
        assert dma != phys, (q, hex(dma), hex(phys))
        # What the device got (QUEUE_PFN << 12) is the guest-physical address.
        assert programmed == phys, (q, hex(programmed), hex(phys))


def test_round_trip(guest):
    balloon_cases.inflate_and_deflate(guest, RAM, ROUND_TRIP_TARGET, timeout=MOVE_S)


def test_guest_stats(guest):
    st = balloon_cases.refreshed_guest_stats(guest, PATH, timeout=90)
    total = b.meminfo(guest)["MemTotal"] * 1024
    # The device read the statistics where the driver wrote them.
    assert abs(st["stats"]["stat-total-memory"] - total) < 0.03 * total, (st, total)
    guest.qmp_cmd("qom-set", path=PATH, property="guest-stats-polling-interval", value=0)


def test_unbind_and_rmmod_with_an_inflated_balloon(guest):
    total = b.meminfo(guest)["MemTotal"]
    b.set_target(guest, 768 * b.MiB)
    b.wait_actual(guest, 768 * b.MiB, timeout=MOVE_S)
    guest.unbind(guest.balloon_bdf())
    assert b.meminfo(guest)["MemTotal"] == total
    assert b.actual(guest) == RAM
    b.set_target(guest, RAM)
    balloon_cases.rmmod_inflated(guest, RAM, 896 * b.MiB, timeout=MOVE_S)
    # No DMA fault was reported: the device never used an I/O virtual address.
    assert "DMAR: [DMA" not in guest.sh("dmesg")
