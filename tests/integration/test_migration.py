# SPDX-License-Identifier: GPL-2.0
"""Balloon page migration, Rust against C in one guest.

With the balloon inflated to half the 1 GiB guest (target 512 MiB), `compact_memory`
migrates balloon pages (`balloon_migrate` in /proc/vmstat grows), the balloon keeps its size
(the Rust driver's debugfs `pages_held`, QMP `actual`), and the guest can then allocate as
many 2 MiB huge pages as with the C driver after the same steps: movable balloon pages do
not pin the page blocks they sit in.  Then the balloon deflates back to 1 GiB and MemTotal
is whole.  The C driver runs first, the Rust stack second, in the same guest; the comparison
fails if a scenario did not run."""

import balloon as b

RAM = 1024 * b.MiB
TARGET = 512 * b.MiB
# Free memory left to the guest's programs when asking for huge pages: asking for everything
# starves them into the OOM killer (which then takes the test's guest agent).  The C driver
# runs first and sets the number asked of both, leaving it RESERVE_MIB; the Rust stack is
# asked the same unless that would leave it less than MIN_RESERVE_MIB (its modules take a
# little more memory than C's).
RESERVE_MIB = 64
MIN_RESERVE_MIB = 32
BALLOON = {}

seen = {"c": {}, "rust": {}}


def scenario(g, who, pages_held=None):
    """Inflate to half the guest, compact, count huge pages, deflate; records what was
    seen.  `pages_held` reads the balloon's own count (Rust only)."""
    obs = seen[who]
    assert b.actual(g) == RAM
    before = b.meminfo(g)
    b.set_target(g, TARGET)
    b.wait_actual(g, TARGET, timeout=180)
    want_pages = (RAM - TARGET) // 4096
    if pages_held:
        assert pages_held() == want_pages
    # The same starting point for both drivers: no page cache to move around.
    g.sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    migrated = b.vmstat(g, "balloon_migrate")
    g.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=300)
    obs["migrated"] = b.vmstat(g, "balloon_migrate") - migrated
    # Migration moves the balloon, it does not resize it.
    assert b.actual(g) == TARGET
    if pages_held:
        assert pages_held() == want_pages
    obs["free_2m_blocks"] = b.free_2m_blocks(g)
    free_mib = b.meminfo(g)["MemFree"] // 1024
    if who == "c":
        obs["huge_pages_asked"] = (free_mib - RESERVE_MIB) // 2
    else:
        obs["huge_pages_asked"] = min((free_mib - MIN_RESERVE_MIB) // 2,
                                      seen["c"]["huge_pages_asked"])
    obs["huge_pages"] = b.huge_pages(g, obs["huge_pages_asked"], timeout=300)
    # And they all went back.
    assert int(g.sh("cat /proc/sys/vm/nr_hugepages")) == 0
    # Allocating them compacts too.
    obs["migrated_with_huge_pages"] = b.vmstat(g, "balloon_migrate") - migrated
    assert b.actual(g) == TARGET
    if pages_held:
        assert pages_held() == want_pages
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=180)
    after = b.meminfo(g)
    obs["memtotal_after_kb"] = after["MemTotal"] - before["MemTotal"]
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    print(f"{who}: {obs}")


def test_c_migration(guest):
    b.bind_c(guest)
    scenario(guest, "c")


def test_rust_migration(guest):
    b.bind_rust(guest)
    scenario(guest, "rust", pages_held=lambda: b.status(guest)["pages_held"])
    st = b.status(guest)
    seen["rust"]["status_migrated"] = st["migrated_pages"]
    # Every migration the core counted went through the driver.
    assert st["migrated_pages"] >= seen["rust"]["migrated"], st
    # Unbinding returns every page: MemTotal as with no balloon.
    before = b.meminfo(guest)["MemTotal"]
    b.set_target(guest, TARGET)
    b.wait_actual(guest, TARGET, timeout=180)
    guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=300)
    guest.unbind(guest.balloon_bdf())
    assert b.meminfo(guest)["MemTotal"] == before
    b.set_target(guest, RAM)


def test_migration_agrees_with_c():
    c, rust = seen["c"], seen["rust"]
    print(f"C: {c}\nRust: {rust}")
    assert "huge_pages" in c and "huge_pages" in rust, "a scenario did not run"
    # compact_memory moved Rust balloon pages (C's it moves or not, depending on where they
    # sit: recorded only).
    assert rust["migrated"] > 0, rust
    # Movable balloon pages leave room for as many huge pages as C's, asked the same.
    assert rust["huge_pages_asked"] == c["huge_pages_asked"], (c, rust)
    assert rust["huge_pages"] >= c["huge_pages"], (c, rust)
