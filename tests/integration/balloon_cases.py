# SPDX-License-Identifier: GPL-2.0
"""Balloon scenarios shared by the MSI-X, INTx and vIOMMU test files."""

import time

import balloon as b


def inflate_and_deflate(g, ram=1024 * b.MiB, target=512 * b.MiB, timeout=120):
    before = b.meminfo(g)
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=timeout)
    during = b.meminfo(g)
    ballooned_kb = (ram - target) // 1024
    # The guest lost about that much: free memory and (without DEFLATE_ON_OOM) MemTotal.
    assert before["MemFree"] - during["MemFree"] > 0.85 * ballooned_kb, (before, during)
    assert abs((before["MemTotal"] - during["MemTotal"]) - ballooned_kb) < 0.02 * ballooned_kb
    b.set_target(g, ram)
    b.wait_actual(g, ram, timeout=timeout)
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"]
    b.assert_free_memory_back(before, after, 0.1 * ballooned_kb)


def rmmod_inflated(g, ram, target, timeout=120):
    """Bind the Rust stack, inflate to `target`, then `rmmod virtio_balloon_rs`: every page
    is back (MemTotal as before) and the driver wrote actual = 0 before it reset the device.
    Leaves the function unbound and the Rust modules unloaded."""
    total = b.meminfo(g)["MemTotal"]
    b.bind_rust(g)
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=timeout)
    g.sh("rmmod virtio_balloon_rs")
    assert b.meminfo(g)["MemTotal"] == total
    assert b.actual(g) == ram
    b.set_target(g, ram)
    g.unbind(g.balloon_bdf())
    g.sh("rmmod virtio_pci_rs virtio_ring_rs")


def refreshed_guest_stats(g, path, timeout):
    """Turns on the device's statistics polling (every 2 s) for the balloon at QOM `path` and
    returns QMP's guest-stats once the driver answered a refresh, not only the first buffer,
    within `timeout` seconds.  Leaves the polling on."""
    g.qmp_cmd("qom-set", path=path, property="guest-stats-polling-interval", value=2)
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        st = g.qmp_cmd("qom-get", path=path, property="guest-stats")
        if st["last-update"]:
            if first is None:
                first = st["last-update"]
            elif st["last-update"] != first:
                return st
        time.sleep(0.5)
    raise AssertionError(f"no refreshed guest-stats: {st}")
