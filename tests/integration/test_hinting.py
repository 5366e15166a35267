# SPDX-License-Identifier: GPL-2.0
"""Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT) during a live migration, the Rust and
the C balloon in one guest.

QEMU refuses to migrate a virtme-ng guest (its 9p root), so this file boots a
`plain_vm.PlainGuest`, which lets go of the 9p root after boot, with an iothread and a legacy
balloon behind a PCIe root port.

1. With `free-page-reporting=on,free-page-hint=on` both drivers negotiate the same features,
   bit for bit (FREE_PAGE_HINT and REPORTING among them).
2. The balloon is swapped (ACPI hot-plug) for one with `free-page-hint=on` only: reporting
   would hand freed memory back to the host, which then migrates it as zero pages, and there
   would be nothing left for hinting to save.  Then, for no balloon driver (hinting not in
   effect), the C driver and the Rust driver in turn: fill a tmpfs with `FILL_MIB` MiB of
   non-zero data and remove it (the guest's free memory now holds data), migrate the VM to
   `exec:cat > /dev/null`, run it again (`cont`), and record what QEMU says it sent.  With
   hinting, the free memory is not sent: both drivers must send at least half the fill less
   than the guest without a balloon driver; the Rust driver's debugfs must count the hinted
   pages, and give every one back once QEMU says DONE.
3. While the Rust driver holds hinted blocks (a slow migration in progress), the guest
   writes NEED_MIB MiB into a tmpfs: reclaim takes hinted blocks back (the shrinker) and
   nothing is OOM-killed.  Then unbinding gives back every block the driver still held
   (MemFree grows by that much), and after unloading MemFree is back where it was before the
   migration, MemTotal unchanged.
"""

import time

import balloon as b
import plain_vm

GUEST_CLASS = plain_vm.PlainGuest
GUEST_OPTIONS = {
    "devices": (b.ROOT_PORT, b.BALLOON + ",free-page-reporting=on,free-page-hint=on,"
                "iothread=io0"),
    "qemu_opts": ("-object", "iothread,id=io0"),
}

FILL_MIB = 384
# Feature bits.
F_FREE_PAGE_HINT = 3
F_REPORTING = 5
# Longest time for the driver to give the hinted blocks back after QEMU says DONE (a
# configuration interrupt, then one work item).
DONE_S = 30
# What unbind gives back may fall short of the hinted blocks it held by this much (MemFree
# moves with slab and per-CPU lists meanwhile); one block is 4 MiB.
UNBIND_SLACK_KB = 16 * 1024
# MemFree after the whole scenario (the guest wrote and removed 256 MiB meanwhile) may differ
# from before by this much (page cache, slab, page tables: 21 MiB seen); the hinted blocks
# were 840 MiB, the shrinker's share 256 MiB.
MEMFREE_SLACK_KB = 64 * 1024
# What the guest takes while the driver holds hinted blocks (reclaim must give them back).
NEED_MIB = 256

seen = {}


def bind_rust(g):
    # Nothing autoloads in this guest (no udev): the balloon driver first, then the transport.
    g.sh("modprobe virtio_balloon_rs")
    b.bind_rust(g)


def unbind_all(g):
    """The function on no driver at all, the C balloon and the Rust modules unloaded."""
    g.unbind(g.balloon_bdf())
    g.sh("grep -q '^virtio_balloon ' /proc/modules && rmmod virtio_balloon; true")
    b.rmmod_all(g)


def fill_and_free(g):
    """Write FILL_MIB MiB of non-zero data into a tmpfs and remove it: the guest's free
    memory then holds data, which a migration must send unless it is hinted."""
    # A 1 MiB pattern, copied FILL_MIB times (in large writes: TCG is slow at syscalls).
    g.sh(f"mkdir -p /tmp/fill && mount -t tmpfs -o size={FILL_MIB + 16}M tmpfs /tmp/fill && "
         f"yes abcdefghijklmnopqrstuvwxyz | head -c 1048576 > /tmp/pattern && "
         f"for i in $(seq {FILL_MIB}); do cat /tmp/pattern; done > /tmp/fill/f && "
         f"rm /tmp/fill/f && umount /tmp/fill", timeout=600)


def migrate_once(g, who):
    fill_and_free(g)
    t = time.monotonic()
    info = b.migrate(g)
    took = time.monotonic() - t
    state = b.resume(g)
    assert info["status"] == "completed", info
    # The guest runs again and answers.
    assert g.sh("echo alive").strip() == "alive"
    assert g.qmp_cmd("query-status")["status"] == "running"
    ram = info["ram"]
    seen[who] = {"transferred_mib": ram["transferred"] >> 20, "normal_pages": ram["normal"],
                 "zero_pages": ram["duplicate"], "seconds": round(took, 1),
                 "left_in": state}
    print(f"{who}: {seen[who]}")
    return info


def test_migration_is_possible(guest):
    assert guest.migration_blockers() == []


def test_features_agree_with_reporting_and_hinting(guest):
    bdf = guest.balloon_bdf()
    b.bind_c(guest)
    c = b.c_features(guest)
    bind_rust(guest)
    rust = b.status(guest)["features"]
    print(f"negotiated with free-page-reporting=on,free-page-hint=on: C {c:#x}, Rust {rust:#x}")
    assert c & (1 << F_FREE_PAGE_HINT) and c & (1 << F_REPORTING), hex(c)
    assert rust == c
    guest.unbind(bdf)
    unbind_all(guest)


def test_swap_to_a_hinting_only_balloon(guest):
    b.unplug(guest)
    b.plug(guest, **{"free-page-hint": True, "iothread": "io0"})
    # The C transport took the function; no balloon driver is loaded.
    assert guest.driver_of(guest.balloon_bdf()) == "virtio-pci"
    assert "virtio_balloon " not in guest.sh("cat /proc/modules")


def test_migration_without_a_balloon_driver(guest):
    migrate_once(guest, "none")


def test_migration_with_the_c_driver(guest):
    b.bind_c(guest)
    assert b.c_features(guest) & (1 << F_FREE_PAGE_HINT)
    migrate_once(guest, "c")
    unbind_all(guest)


def test_migration_with_the_rust_driver(guest):
    bind_rust(guest)
    before = b.status(guest)
    assert before["features"] & (1 << F_FREE_PAGE_HINT), before
    migrate_once(guest, "rust")
    st = b.status(guest)
    hinted = st["hinted_pages"] - before["hinted_pages"]
    seen["rust"]["hinted_mib"] = hinted >> 8
    seen["rust"]["runs"] = st["hint_runs"] - before["hint_runs"]
    print(f"rust: {st}")
    assert hinted > 0 and seen["rust"]["runs"] >= 1, st
    assert st["hint_errors"] == 0 and st["device_errors"] == 0, st
    # QEMU said DONE before the VM state moved: once it runs again the driver gives every
    # hinted block back.
    deadline = time.monotonic() + DONE_S
    while st["hint_held_pages"] != 0:
        assert time.monotonic() < deadline, f"hinted blocks still held after {DONE_S} s: {st}"
        time.sleep(0.5)
        st = b.status(guest)
    assert st["hint_returned_pages"] + st["hint_shrunk_pages"] == st["hinted_pages"], st


def test_hinting_sends_less():
    none, c, rust = seen["none"], seen["c"], seen["rust"]
    print(f"sent (MiB): no driver {none['transferred_mib']}, C {c['transferred_mib']}, "
          f"Rust {rust['transferred_mib']} (hinted {rust['hinted_mib']} MiB)")
    # The fill was freed before each migration; hinting keeps most of it from being sent.
    for who in (c, rust):
        assert who["transferred_mib"] <= none["transferred_mib"] - FILL_MIB // 2, seen


def test_unbind_while_hinting_leaks_nothing(guest):
    """A slow migration keeps the hinted blocks with the driver; unbinding then gives them
    all back (the guest's free memory returns), and the modules unload."""
    bind_rust(guest)
    mem0 = b.meminfo(guest)
    old = guest.qmp_cmd("query-migrate-parameters")["max-bandwidth"]
    guest.qmp_cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
    try:
        guest.qmp_cmd("migrate", uri="exec:cat > /dev/null")
        deadline = time.monotonic() + 60
        while True:
            st = b.status(guest)
            if st["hint_held_pages"] >= (FILL_MIB // 2) << 8:
                break
            assert time.monotonic() < deadline, f"no hinting during the migration: {st}"
            time.sleep(0.5)
        mem_held = b.meminfo(guest)
        print(f"held {st['hint_held_pages'] >> 8} MiB; MemFree {mem0['MemFree']} kB before, "
              f"{mem_held['MemFree']} kB while held")
        # The guest needs memory: reclaim takes hinted blocks back first, nobody is killed.
        kills = b.oom_kills(guest)
        guest.sh(f"mkdir -p /tmp/need && mount -t tmpfs -o size={NEED_MIB + 16}M tmpfs "
                 f"/tmp/need && dd if=/dev/zero of=/tmp/need/f bs=1M count={NEED_MIB} && "
                 f"rm /tmp/need/f && umount /tmp/need", timeout=300)
        st = b.status(guest)
        print(f"after the guest took {NEED_MIB} MiB: {st['hint_shrunk_pages'] >> 8} MiB of "
              f"hinted blocks given back to reclaim, {st['hint_held_pages'] >> 8} MiB held")
        assert st["hint_shrunk_pages"] > 0, st
        assert b.oom_kills(guest) == kills
        # Unbind gives back every block it still holds.
        mem_unbind = b.meminfo(guest)
        held_kb = b.status(guest)["hint_held_pages"] * 4
        guest.unbind(guest.balloon_bdf())
        b.rmmod_all(guest)
        mem1 = b.meminfo(guest)
        fields = ("MemFree", "Cached", "Shmem", "Slab", "PageTables", "KernelStack")
        print(f"unbind with {held_kb} kB held; before the migration, before unbind, after "
              f"unbind and rmmod: {[(k, mem0[k], mem_unbind[k], mem1[k]) for k in fields]}")
        assert mem1["MemFree"] - mem_unbind["MemFree"] >= held_kb - UNBIND_SLACK_KB, (
            held_kb, mem_unbind["MemFree"], mem1["MemFree"])
        assert mem1["MemTotal"] == mem0["MemTotal"], (mem0["MemTotal"], mem1["MemTotal"])
        assert mem1["MemFree"] >= mem0["MemFree"] - MEMFREE_SLACK_KB, (
            [(k, mem0[k], mem1[k]) for k in fields])
    finally:
        guest.qmp_cmd("migrate_cancel")
        deadline = time.monotonic() + 60
        while guest.qmp_cmd("query-migrate").get("status") not in (
                "cancelled", "completed", "failed"):
            assert time.monotonic() < deadline, "the migration did not stop"
            time.sleep(0.2)
        b.resume(guest)
        guest.qmp_cmd("migrate-set-parameters", **{"max-bandwidth": old})
