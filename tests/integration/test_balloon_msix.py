# SPDX-License-Identifier: GPL-2.0
"""The Rust stack follows QEMU's target with MSI-X (QEMU's default: 2 vectors), and gives every
page back on unbind and rmmod."""

import balloon as b
import balloon_cases

RAM = 1024 * b.MiB


def test_rust_transport_uses_msix(guest):
    b.bind_rust(guest)
    log = "\n".join(guest.new_kernel_log())
    assert "MSI-X" in log and "balloon ready" in log, log


def test_inflate_to_512m_and_back(guest):
    balloon_cases.inflate_and_deflate(guest, RAM, 512 * b.MiB)


def test_unbind_with_inflated_balloon_returns_every_page(guest):
    total = b.meminfo(guest)["MemTotal"]
    b.set_target(guest, 640 * b.MiB)
    b.wait_actual(guest, 640 * b.MiB)
    assert b.meminfo(guest)["MemTotal"] < total - 300 * 1024
    guest.unbind(guest.balloon_bdf())
    assert b.meminfo(guest)["MemTotal"] == total
    # The driver wrote actual = 0 before it reset the device.
    assert b.actual(guest) == RAM
    b.set_target(guest, RAM)


def test_rmmod_with_inflated_balloon_returns_every_page(guest):
    total = b.meminfo(guest)["MemTotal"]
    b.bind_rust(guest)
    b.set_target(guest, 768 * b.MiB)
    b.wait_actual(guest, 768 * b.MiB)
    guest.sh("rmmod virtio_balloon_rs")
    assert b.meminfo(guest)["MemTotal"] == total
    assert b.actual(guest) == RAM
    b.set_target(guest, RAM)
    guest.unbind(guest.balloon_bdf())
    guest.sh("rmmod virtio_pci_rs virtio_ring_rs")
