# SPDX-License-Identifier: GPL-2.0
"""The Rust stack with MSI-X (QEMU's default: 2 vectors): it follows QEMU's target, answers
the statistics queue, shows the same state in debugfs as QMP does, and gives every page back
on unbind and rmmod.  One guest for all, in this order."""

import balloon as b
import balloon_cases

RAM = 1024 * b.MiB
PATH = "/machine/peripheral/balloon0"
TAGS = ("stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
        "stat-free-memory", "stat-total-memory", "stat-available-memory", "stat-disk-caches",
        "stat-htlb-pgalloc", "stat-htlb-pgfail", "stat-oom-kills", "stat-alloc-stalls",
        "stat-async-scans", "stat-direct-scans", "stat-async-reclaims", "stat-direct-reclaims")
UNSET = 2**64 - 1


def test_rust_transport_uses_msix(guest):
    b.bind_rust(guest)
    log = "\n".join(guest.new_kernel_log())
    assert "MSI-X" in log and "balloon ready" in log, log


def test_guest_stats_carry_every_tag(guest):
    stats = balloon_cases.refreshed_guest_stats(guest, PATH, timeout=60)["stats"]
    missing = [t for t in TAGS if stats.get(t, UNSET) == UNSET]
    assert not missing, (missing, stats)
    mem = b.meminfo(guest)
    total, free = mem["MemTotal"] * 1024, mem["MemFree"] * 1024
    assert abs(stats["stat-total-memory"] - total) < 0.03 * total, (stats, mem)
    assert abs(stats["stat-free-memory"] - free) < 0.05 * total, (stats, mem)
    # debugfs shows what was sent (a refresh may have happened since QMP's copy).
    assert b.status(guest)["stats_sent"] >= 2
    assert abs(b.debugfs(guest, "stats")["total_memory"] - stats["stat-total-memory"]) \
        < 0.03 * total


def test_debugfs_matches_qmp_after_inflate_and_deflate(guest):
    b.set_target(guest, 768 * b.MiB)
    b.wait_actual(guest, 768 * b.MiB)
    st = b.status(guest)
    want = (RAM - 768 * b.MiB) // 4096
    assert st["actual_pages"] == want and st["target_pages"] == want, st
    assert st["pages_held"] == want, st
    assert st["inflated_pages"] - st["deflated_pages"] == want, st
    assert st["features"] & (1 << 1), st  # STATS_VQ negotiated
    b.set_target(guest, RAM)
    b.wait_actual(guest, RAM)
    st = b.status(guest)
    assert st["actual_pages"] == 0 and st["pages_held"] == 0, st
    assert st["device_errors"] == 0, st


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
    balloon_cases.rmmod_inflated(guest, RAM, 768 * b.MiB)
