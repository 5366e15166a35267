# SPDX-License-Identifier: GPL-2.0
"""Helpers the balloon tests and the tools (demo, benchmarks) share: bind the Rust stack,
move the target over QMP, wait for `actual`, read the guest's memory counters and
fragmentation."""

import time

MiB = 1024 * 1024
# The memory of the test guests (vm.Guest's default).
RAM = 1024 * MiB
# Seconds to wait for `actual` on a debug kernel (KASAN, lockdep) under TCG.
SLOW_WAIT = 300
MODULES = ("virtio_balloon_rs", "virtio_pci_rs", "virtio_ring_rs")
# The Rust balloon's debugfs directory, and its status file.
DEBUGFS = "/sys/kernel/debug/virtio_balloon_rs/balloon.*"
STATUS = f"{DEBUGFS}/status"
# The test-only fault switch of virtio_ring_rs (fault flavour only).
RING_FAULT = "/sys/kernel/debug/virtio_ring_rs/fault"

ROOT_PORT = "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1"
# Legacy only; behind a PCIe port QEMU would turn legacy off unless told.
# (QMP's device_add wants JSON types: booleans for bool properties, strings for OnOffAuto.)
BALLOON_PROPS = {"id": "balloon0", "bus": "rp0", "disable-modern": True,
                 "disable-legacy": "off"}
BALLOON = "virtio-balloon-pci,id=balloon0,bus=rp0,disable-modern=on,disable-legacy=off"


def debugfs(g, name):
    """A file of the Rust balloon's debugfs directory (`key value` lines: `status`, `stats`)
    as a dict of ints."""
    out = g.sh(f"cat {DEBUGFS}/{name}")
    return {k: int(v, 0) for k, v in (line.split() for line in out.splitlines())}


def status(g):
    """The Rust balloon's debugfs status as a dict of ints."""
    return debugfs(g, "status")


def c_features(g):
    """The C driver's negotiated features: sysfs prints one 0/1 character per bit."""
    bits = g.sh("cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features").strip()
    return sum(1 << i for i, c in enumerate(bits) if c == "1")


def loaded_rs_modules(g):
    return [l.split()[0] for l in g.sh("cat /proc/modules").splitlines()
            if l.split()[0] in MODULES]


def rmmod_all(g):
    """Unload the three modules (those loaded), in dependency order; they must go."""
    g.sh("for m in virtio_balloon_rs virtio_pci_rs virtio_ring_rs; do "
         "grep -q \"^$m \" /proc/modules && rmmod $m; done; true", timeout=300)
    left = loaded_rs_modules(g)
    assert not left, f"modules still loaded: {left}"




# What meminfo() runs in the guest: /proc/meminfo and a "PcpFree:" line.
MEMINFO_SH = ("cat /proc/meminfo; "
              "awk '$1 == \"count:\" { n += $2 } END { print \"PcpFree:\", n * 4, \"kB\" }' "
              "/proc/zoneinfo")


def meminfo(g):
    """The guest's /proc/meminfo as a dict of kB values, plus ``PcpFree``: the free pages
    that sit on the per-CPU lists (/proc/zoneinfo's pageset counts), which MemFree leaves
    out.  7.2 tunes those lists' size to how much a CPU frees: after a deflate they can hold
    tens of MiB (up to an eighth of the zone, shared out among the CPUs) until the vmstat
    worker has decayed them, a little each second while it runs."""
    out = g.sh(MEMINFO_SH)
    info = {}
    for line in out.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            info[key] = int(fields[0])
    return info


# What else takes free pages while a test runs, and shows where it put them: page cache
# (the guest runs commands from a 9p root, the agent writes files), slab, stacks, page
# tables, per-CPU and vmalloc areas, anonymous memory.
CONSUMERS = ("Cached", "Buffers", "SwapCached", "AnonPages", "SReclaimable", "SUnreclaim",
             "KernelStack", "PageTables", "SecPageTables", "Percpu", "VmallocUsed")


def unexplained_loss_kb(before, after):
    """kB of free memory (MemFree and the per-CPU lists) that went missing between two
    meminfo() readings without showing up in any of the kernel's other counters: what a page
    the driver kept (or lost) costs.
    A reading where a consumer shrank counts that shrinking as free memory regained."""
    lost = (before["MemFree"] + before["PcpFree"]) - (after["MemFree"] + after["PcpFree"])
    grown = sum(after.get(k, 0) - before.get(k, 0) for k in CONSUMERS)
    return lost - grown


def assert_free_memory_back(before, after, slack_kb):
    """MemFree after a round trip is back where it was, up to slack_kb, once what the rest
    of the guest took meanwhile (consumers that show it) is accounted for."""
    missing = unexplained_loss_kb(before, after)
    detail = {k: after.get(k, 0) - before.get(k, 0) for k in ("MemFree", "PcpFree") + CONSUMERS}
    assert missing < slack_kb, f"{missing} kB of free memory unaccounted for; changes: {detail}"


def bind_rust(g, driver="virtio_pci_rs"):
    """Load the Rust transport, move the balloon function to it, wait for the balloon."""
    bdf = g.balloon_bdf()
    g.sh("modprobe virtio_pci_rs")
    g.bind(bdf, driver)
    g.sh("for i in $(seq 150); do "
         "[ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ] && exit 0; "
         "sleep 0.2; done; exit 1", timeout=60)
    # udev loads virtio_balloon_rs for each auxiliary device it sees added, possibly late on
    # a busy guest: let it finish, or its modprobe could reload the driver after a test's
    # rmmod.
    g.sh("udevadm settle -t 60 || true", timeout=90)
    return bdf


def bind_c(g):
    """Move the balloon function to the C virtio-pci driver (virtio_balloon autoloads)."""
    bdf = g.balloon_bdf()
    g.bind(bdf, "virtio-pci")
    g.sh("for i in $(seq 150); do "
         "ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep -q virtio && exit 0; "
         "modprobe virtio_balloon; sleep 0.2; done; exit 1", timeout=60)
    return bdf


def set_target(g, size_bytes):
    g.qmp_cmd("balloon", value=size_bytes)


def actual(g):
    return g.qmp_cmd("query-balloon")["actual"]


def wait_actual(g, size_bytes, timeout=120, samples=None, origin=None, poll=0.1):
    """Wait until query-balloon reports `size_bytes`, asking every `poll` seconds; return the
    seconds it took.

    With `samples` (a list), append (seconds since `origin`, actual) pairs along the way."""
    t0 = time.monotonic()
    while True:
        a = actual(g)
        now = time.monotonic() - t0
        if samples is not None:
            samples.append((time.monotonic() - (origin if origin is not None else t0), a))
        if a == size_bytes:
            return now
        if now > timeout:
            raise AssertionError(f"actual stuck at {a} (wanted {size_bytes}) after {timeout}s")
        time.sleep(poll)


_RAISE = object()


def vmstat(g, key, missing=_RAISE):
    """The counter `key` of the guest's /proc/vmstat; `missing` if it has none (by default,
    that fails the test)."""
    for line in g.sh("cat /proc/vmstat").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    if missing is _RAISE:
        raise AssertionError(f"no {key} in /proc/vmstat")
    return missing


def oom_kills(g):
    """OOM kills since the guest booted (/proc/vmstat)."""
    return vmstat(g, "oom_kill", missing=0)


def blocks_of(buddyinfo):
    """Free blocks of 2 MiB or more, in 2 MiB units, in /proc/buddyinfo's text (orders 9 and
    up)."""
    n = 0
    for line in buddyinfo.splitlines():
        if not line.startswith("Node"):
            continue
        counts = [int(x) for x in line.split()[4:]]
        n += sum(c << (order - 9) for order, c in enumerate(counts) if order >= 9)
    return n


def free_2m_blocks(g):
    """Free blocks of 2 MiB or more, in 2 MiB units (/proc/buddyinfo, orders 9 and up)."""
    return blocks_of(g.sh("cat /proc/buddyinfo"))


def huge_pages(g, most, timeout=600):
    """How many 2 MiB huge pages (up to `most`) the guest can allocate now (then frees
    them); `timeout`: seconds the allocation may take."""
    g.sh(f"echo {most} > /proc/sys/vm/nr_hugepages", timeout=timeout)
    got = int(g.sh("cat /proc/sys/vm/nr_hugepages"))
    g.sh("echo 0 > /proc/sys/vm/nr_hugepages", timeout=120)
    return got


def squeeze(g, ram, leave_mib=64, timeout=180):
    """Inflate until only about `leave_mib` MiB are available in a guest of `ram` bytes;
    returns the target."""
    avail_mib = meminfo(g)["MemAvailable"] // 1024
    target = ram - (avail_mib - leave_mib) * MiB
    set_target(g, target)
    wait_actual(g, target, timeout=timeout)
    return target


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
        out = g.sh("for d in /sys/bus/pci/devices/*; do read v < $d/vendor; "
                   "read i < $d/device; [ $v:$i = 0x1af4:0x1002 ] && "
                   "[ -e $d/driver ] && echo ${d##*/}; done; true")
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


def migrate(g, uri="exec:cat > /dev/null", timeout=600):
    """Migrate the VM to `uri` (by default a stream QEMU throws away) and wait until the
    migration ends; returns the last `query-migrate` (its `ram` holds what was sent: bytes
    `transferred`, `normal` pages sent whole, `duplicate` zero pages sent as a marker).

    After a migration to `exec:` the source VM stays, paused (`postmigrate`); `cont` runs it
    again."""
    g.qmp_cmd("migrate", uri=uri)
    t0 = time.monotonic()
    while True:
        info = g.qmp_cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() - t0 > timeout:
            g.qmp_cmd("migrate_cancel")
            raise AssertionError(f"migration still {info.get('status')} after {timeout}s")
        time.sleep(0.2)


def resume(g):
    """Run the VM again if a migration left it paused; returns the state it was in."""
    state = g.qmp_cmd("query-status")["status"]
    if state != "running":
        g.qmp_cmd("cont")
    return state
