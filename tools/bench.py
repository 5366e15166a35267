#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make bench: the Rust stack against the C drivers on the same device in the same VM.

One guest boot.  The legacy balloon function is bound alternately to the C drivers
(virtio-pci + virtio_balloon) and to the Rust stack, interleaved, REPS times each; each run
inflates the balloon by 1 GiB and deflates it again, timed from the QMP command to
query-balloon's `actual` reaching the target.  Also: guest CPU time spent (from /proc/stat),
the ring micro-benchmark (ns per add/kick-prepare/complete/get_buf cycle, module parameter
`bench_cycles` of the bench flavour) against the same cycle on the kernel's
C virtio_ring (tests/bench/vring_bench_c.ko), and the size of each .ko.  Prints a table with medians, min and
max and the Rust/C ratios, and writes a PNG (balloon size over time, both drivers, same axes).

The ring micro-benchmark runs twice: in the balloon guest (TCG wall clock, which a busy host
disturbs: loads of one module vary by 1.5x), and in a second, small guest under QEMU's
`-icount shift=0`, where the guest clock advances exactly 1 ns per instruction executed, so
its "ns/cycle" is the number of guest instructions per cycle: deterministic, load-independent,
the measurement the Rust/C verdict rests on.  BENCH_ONLY=ring runs the ring micro-benchmark
alone (both guests).

`scripts/bench` builds the modules for each kernel in a directory of its own and names them in
BENCH_SPEC ("flavour:kdir:build-dir ..."): the balloon table is measured in one guest per
kernel, the verdict on the production kernel (no lockdep or kmemleak).  The ring
micro-benchmark runs on the checked kernel only.  On the kernels of BENCH_FRAG_KERNELS,
fragmentation: BENCH_FRAG_ROUNDS (3) rounds, in each a fresh guest per driver,
BENCH_FRAG_CYCLES (20) inflate/deflate cycles of half the guest, then the free 2 MiB blocks
(/proc/buddyinfo, orders 9 and up) once the per-CPU lists are drained (see DRAIN_SH) and the
huge pages the guest can allocate (/proc/sys/vm/nr_hugepages) when asked for all its free
memory but 128 MiB; median, min and max over the rounds.  BENCH_ONLY=frag runs only that.
"""

import os
import re
import statistics
import sys
import time

import toollib  # first: puts tests/lib on the module path
import balloon as b
import vm

RAM_MIB = int(os.environ.get("BENCH_RAM_MIB", "2048"))
RAM = RAM_MIB * b.MiB
DELTA = 1024 * b.MiB
REPS = int(os.environ.get("BENCH_REPS", "3"))
RING_CYCLES = int(os.environ.get("BENCH_RING_CYCLES", "200000"))
RING_REPS = int(os.environ.get("BENCH_RING_REPS", "5"))
# BENCH_ONLY=ring: boot a guest for the ring micro-benchmark only (no balloon runs);
# BENCH_ONLY=frag: the fragmentation runs only.
ONLY = os.environ.get("BENCH_ONLY", "")


def cpu_ticks(g):
    """Busy and total jiffies of the guest (all CPUs)."""
    fields = [int(x) for x in g.sh("head -1 /proc/stat").split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# Seconds between two `query-balloon`s while a phase is timed: the resolution of the times
# (at 0.1 s, what the tests poll, every phase took a multiple of 0.1 s plus 0.01 s).
POLL = 0.01


def timed(g, target, samples):
    busy0, _ = cpu_ticks(g)
    t0 = time.monotonic()
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=600, samples=samples, origin=t0, poll=POLL)
    secs = time.monotonic() - t0
    busy1, _ = cpu_ticks(g)
    hz = 100
    return secs, (busy1 - busy0) / hz


PROFILE = ("messages", "alloc_ns", "post_ns", "wait_ns", "release_ns", "list_ns")


def rust_counters(g):
    """The Rust balloon's debugfs counters (profile of where its time goes)."""
    out = g.sh("cat /sys/kernel/debug/virtio_balloon_rs/balloon.*/status")
    vals = dict(line.split() for line in out.splitlines() if line.strip())
    return {k: int(vals[k]) for k in PROFILE}


# The configurations measured: the C drivers, the Rust stack, and the Rust stack held to the
# C driver's protocol (256 pages per message, one in flight), which separates what the
# protocol buys from what the rest of the driver does.
# The Rust stack with one lever of issue 15 switched at a time shows what that lever buys, in
# the same guest: whole 2 MiB blocks (block_alloc=1; off by default since it bought no wall
# time on the production kernel and leaves compaction no balloon page to migrate) and the
# managed page counts adjusted once per message (batch_accounting=0: once per page, by the
# balloon core).
RUST_PARAMS = {"Rust": "", "Rust, C protocol": "msg_pages=256 msgs_in_flight=1",
               "Rust, 2 MiB blocks": "block_alloc=1",
               "Rust, per-page accounting": "batch_accounting=0"}
DRIVERS = ("C", "Rust", "Rust, C protocol", "Rust, 2 MiB blocks", "Rust, per-page accounting")


def run_one(g, driver, trace, profile):
    if driver == "C":
        b.bind_c(g)
    else:
        g.unbind(g.balloon_bdf())
        g.run("rmmod virtio_balloon_rs", check=False)
        g.sh(f"modprobe virtio_balloon_rs {RUST_PARAMS[driver]}")
        b.bind_rust(g)
    b.set_target(g, RAM)
    b.wait_actual(g, RAM)
    phases = []
    for target in (RAM - DELTA, RAM):
        before = rust_counters(g) if driver != "C" else None
        samples = []
        phases.append(timed(g, target, samples))
        trace.append(samples)
        if before is not None:
            after = rust_counters(g)
            profile.setdefault(driver, []).append({k: after[k] - before[k] for k in PROFILE})
    return phases[0], phases[1]


# The ring micro-benchmark: the same cycle (add + kick_prepare (+ notify) + device completion +
# get_buf, 256-entry queue, EVENT_IDX, one 4 KiB device-writable element) on virtio_ring_rs
# (virtio_ring_rs/bench.rs) and on the kernel's C virtio_ring (tests/bench/vring_bench_c.c), each
# loaded in turn in the same guest, RING_REPS times, interleaved.  Each load logs
# "<module>: bench: N cycles, X ns/cycle (fastest of 20 batches: Y ns/cycle)": X is the mean
# over the N cycles, Y the mean of the fastest twentieth, the figure a busy host disturbs least.
# The Rust side is the bench flavour of virtio_ring_rs (scripts/build-flavour bench): the
# production module has no benchmark.
def ring_variants(out):
    """name, .ko path, module name, parameters of each variant, built in `out` (a build
    directory of scripts/bench)."""
    c_ko = os.path.join(out, "tests-bench", "vring_bench_c.ko")
    return (
        ("Rust", os.path.join(out, "ring", "virtio_ring_rs.ko"), "virtio_ring_rs", ""),
        ("C", c_ko, "vring_bench_c", ""),
        # The C add that takes DMA addresses, as the Rust API does: shows what sg_phys() costs
        # C.
        ("C premapped", c_ko, "vring_bench_c", "premapped=1"),
    )


RING_LINE = re.compile(r"bench: \d+ cycles, ([\d.]+) ns/cycle \(fastest of \d+ batches: ([\d.]+) ns")


def ring_once(g, path, module, params):
    """Load `module` with the benchmark; return its (mean, fastest batch) ns/cycle."""
    out = g.sh(f"insmod {path} bench_cycles={RING_CYCLES} {params} && "
               f"dmesg | grep '{module}: bench: ' | tail -1; rmmod {module}", timeout=900)
    m = RING_LINE.search(out)
    if not m:
        raise vm.GuestError(f"no ring benchmark result from {module}:\n{out}")
    return float(m.group(1)), float(m.group(2))


def ring_bench(g, out):
    """(mean, fastest) ns/cycle of each variant, RING_REPS loads each, the order rotating."""
    variants = ring_variants(out)
    assert os.path.exists(variants[0][1]), \
        "the bench flavour's .ko files are missing (scripts/bench builds them)"
    g.run("rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs vring_bench_c 2>/dev/null",
          check=False)
    res = {name: [] for name, *_ in variants}
    for rep in range(RING_REPS):
        k = rep % len(variants)
        for name, ko, module, params in variants[k:] + variants[:k]:
            mean, best = ring_once(g, ko, module, params)
            res[name].append((mean, best))
            print(f"ring rep {rep} {name:11s}: {mean:8.1f} ns/cycle (fastest batch {best:8.1f})",
                  flush=True)
    return res


def ring_report(res, icount=False):
    """The ring table: median, min, max ns/cycle per variant, and the ratios to C."""
    what = ("guest instructions per cycle under -icount shift=0 (1 ns = 1 instruction)"
            if icount else "ns/cycle, TCG wall clock")
    lines = [f"ring micro-benchmark: {RING_CYCLES} cycles per load, {RING_REPS} loads per "
             f"variant, interleaved ({what}: median min max over the loads)",
             f"{'':14s} {'mean of all cycles':>26s}   {'fastest batch':>26s}"]
    med = {}
    for name, xs in res.items():
        mean = [x[0] for x in xs]
        best = [x[1] for x in xs]
        med[name] = (statistics.median(mean), statistics.median(best))
        lines.append(f"  {name:12s} {fmt_ns(mean)}   {fmt_ns(best)}")
    c, r = med["C"], med["Rust"]
    lines.append(f"  {'Rust/C':12s} {r[0] / c[0]:8.2f} {'':17s}   {r[1] / c[1]:8.2f}")
    if "C premapped" in med:
        p = med["C premapped"]
        lines.append(f"  {'Rust/C prem.':12s} {r[0] / p[0]:8.2f} {'':17s}   {r[1] / p[1]:8.2f}")
    return "\n".join(lines)


def fmt_ns(xs):
    return f"{statistics.median(xs):8.1f} {min(xs):8.1f} {max(xs):8.1f}"


def ring_icount(out):
    """The ring micro-benchmark in a guest whose clock counts instructions; returns its
    results and the kernel problems seen."""
    # One vCPU: -icount runs the vCPUs in one thread anyway.
    with vm.Guest("bench-icount", memory="1024M", cpus=1, devices=(),
                  qemu_opts=["-icount", "shift=0"], boot_timeout=600) as g:
        res = ring_bench(g, out)
        return res, g.kernel_problems()


def ring_main():
    """BENCH_ONLY=ring: the ring micro-benchmark only, wall clock then instruction count."""
    _, kdir, out = KERNELS[0]
    os.environ["KDIR"] = kdir
    with vm.Guest("bench-ring", memory="1024M", cpus=2, devices=()) as g:
        res = ring_bench(g, out)
        problems = g.kernel_problems()
    icount, more = ring_icount(out)
    print()
    print(ring_report(res))
    print(ring_report(icount, icount=True))
    problems += more
    return toollib.exit_status(problems)


def fmt_stats(xs):
    return f"{statistics.median(xs):7.2f} {min(xs):7.2f} {max(xs):7.2f}"


# The kernels: (flavour, kernel tree, build directory with mods/, tests-bench/, ring/).
KERNELS = [tuple(k.split(":", 2)) for k in os.environ.get("BENCH_SPEC", "").split()]
FRAG_KERNELS = os.environ.get("BENCH_FRAG_KERNELS", "prod").split()
FRAG_CYCLES = int(os.environ.get("BENCH_FRAG_CYCLES", "20"))
# Rounds per driver, a fresh guest each, the drivers' order alternating (C first in even
# rounds): the spread over the rounds is the noise "not worse" is judged against.
FRAG_ROUNDS = int(os.environ.get("BENCH_FRAG_ROUNDS", "3"))
# Free memory left to the guest's programs when asking for huge pages (asking for everything
# starves them into the OOM killer, see tests/integration/test_migration.py).
FRAG_RESERVE_MIB = 128
# Seconds the per-CPU lists get to drain before buddyinfo is read anyway.
FRAG_DRAIN_TIMEOUT = 60

# The per-CPU lists (pcp) hold free pages that are in neither MemFree nor /proc/buddyinfo
# and do not merge into their blocks until they go back to the buddy allocator.  7.2
# auto-tunes a list's `high` up to an eighth of the zone (high_max) while a CPU frees much
# (a deflate), and decays it again in decay_pcp_high() (mm/page_alloc.c), which the vmstat
# worker calls about once a second: `high` falls by an eighth a call, down to high_min, and
# what the list holds above `high` goes back to the buddy allocator.  Userspace cannot call
# drain_all_pages() (the allocator does, before it fails a high-order allocation); it can
# run the decay step at once: a write to /proc/sys/vm/stat_refresh runs
# refresh_cpu_vm_stats(true), that is decay_pcp_high() on every zone, on every CPU.  And it
# can lower the floor: with vm.percpu_pagelist_high_fraction set, high_min = high_max = the
# zone's pages / fraction / CPUs, at least 4 batches (252 pages for a 2 GiB guest's DMA32
# zone, against about 900 by default); INT_MAX gives that least.  DRAIN_SH sets it, decays
# the lists until every list's `high` is at its floor (or FRAG_DRAIN_TIMEOUT), reads
# buddyinfo, the pcp counts and MemFree in the same script, and restores the fraction.
# Reading each stage: "pcp <pages on the lists> <lists above their floor>".
PCP_AWK = ("awk '$1 == \"count:\" { c += $2 } $1 == \"high:\" { h = $2 } "
           "$1 == \"high_min:\" { if (h > $2) d++ } END { print \"pcp\", c + 0, d + 0 }' "
           "/proc/zoneinfo")
DRAIN_SH = f"""
frac=$(cat /proc/sys/vm/percpu_pagelist_high_fraction)
echo 2147483647 > /proc/sys/vm/percpu_pagelist_high_fraction
end=$(( $(date +%s) + {FRAG_DRAIN_TIMEOUT} ))
n=0
while :; do
    echo 1 > /proc/sys/vm/stat_refresh
    n=$((n + 1))
    set -- $({PCP_AWK})
    [ "$3" = 0 ] && break
    [ "$(date +%s)" -ge "$end" ] && break
done
echo "refreshes $n"
cat /proc/buddyinfo
{PCP_AWK}
grep '^MemFree:' /proc/meminfo
echo "$frac" > /proc/sys/vm/percpu_pagelist_high_fraction
"""


def pcp_pages(g):
    """Free pages on the per-CPU lists (/proc/zoneinfo, `count` of every pageset): free, but
    neither in MemFree nor in /proc/buddyinfo."""
    return int(g.sh(PCP_AWK).split()[1])


def drain_and_read(g):
    """DRAIN_SH: the per-CPU lists drained as far as userspace can; returns the free 2 MiB
    blocks, the pages left on the lists, the lists still above their floor, MemFree (kB) and
    the stat_refresh writes it took, all read in one guest script."""
    out = g.sh(DRAIN_SH, timeout=FRAG_DRAIN_TIMEOUT + 60)
    vals = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "refreshes":
            vals["refreshes"] = int(f[1])
        elif f and f[0] == "pcp":
            vals["pcp_pages"], vals["pcp_above_floor"] = int(f[1]), int(f[2])
        elif f and f[0] == "MemFree:":
            vals["memfree_kb"] = int(f[1])
    vals["free_2m_blocks"] = b.blocks_of(out)
    return vals


COMPACT = ("compact_stall", "pgmigrate_success")


def huge_pages(g, most):
    """How many 2 MiB huge pages (up to `most`) the guest can allocate now (then frees
    them); and what compaction did meanwhile (/proc/vmstat deltas)."""
    before = {n: b.vmstat(g, n) for n in COMPACT}
    got = b.huge_pages(g, most)
    return got, {n: b.vmstat(g, n) - before[n] for n in COMPACT}


def frag_one(driver, moddir, rnd):
    """In a fresh guest: FRAG_CYCLES cycles of inflating half the guest and deflating it with
    `driver`, then (page cache dropped) the free 2 MiB blocks as read at once, and again once
    the per-CPU lists are drained (DRAIN_SH), and the huge pages the guest can allocate when
    asked for all its free memory but FRAG_RESERVE_MIB."""
    t_guest = time.monotonic()
    with vm.Guest(f"bench-frag-{driver.lower()}-{rnd}", memory=f"{RAM_MIB}M", cpus=2,
                  moddir=moddir) as g:
        if driver == "C":
            b.bind_c(g)
        else:
            b.bind_rust(g)
            # The C balloon module loaded at boot (virtio-pci had the device then) and is
            # unbound now: unloaded, so that each guest holds only its own driver's modules.
            g.run("rmmod virtio_balloon", check=False)
        b.set_target(g, RAM)
        b.wait_actual(g, RAM)
        obs = {"free_2m_blocks_at_boot": b.free_2m_blocks(g)}
        # Free memory with the driver bound, before the cycles: what the drivers' own
        # footprint leaves.
        m = b.meminfo(g)
        obs["free_mib_at_boot"] = (m["MemFree"] + m["PcpFree"]) / 1024
        t0 = time.monotonic()
        for _ in range(FRAG_CYCLES):
            b.set_target(g, RAM // 2)
            b.wait_actual(g, RAM // 2, timeout=600)
            b.set_target(g, RAM)
            b.wait_actual(g, RAM, timeout=600)
        obs["cycles_s"] = time.monotonic() - t0
        # The same starting point for both drivers: no page cache.
        g.sh("sync; echo 3 > /proc/sys/vm/drop_caches")
        # As read before this change: the lists as the deflate left them.
        obs["free_2m_blocks_undrained"] = b.free_2m_blocks(g)
        obs["pcp_mib_undrained"] = pcp_pages(g) * 4096 / b.MiB
        d = drain_and_read(g)
        obs["free_2m_blocks"] = d["free_2m_blocks"]
        obs["pcp_pages"] = d["pcp_pages"]
        obs["pcp_above_floor"] = d["pcp_above_floor"]
        obs["refreshes"] = d["refreshes"]
        free_mib = (d["memfree_kb"] + 4 * d["pcp_pages"]) / 1024
        obs["free_mib"] = free_mib
        obs["in_blocks_pct"] = 100 * 2 * obs["free_2m_blocks"] / free_mib
        # Each guest asked for all its free memory (MemFree and what is left on the lists)
        # but the same reserve: the number can differ, and falls short of the ask when
        # neither the free blocks nor compaction can supply a block.
        obs["huge_pages_asked"] = int(free_mib - FRAG_RESERVE_MIB) // 2
        obs["huge_pages"], comp = huge_pages(g, obs["huge_pages_asked"])
        obs["huge_pages_short"] = obs["huge_pages_asked"] - obs["huge_pages"]
        obs["compact_stall"] = comp["compact_stall"]
        obs["pgmigrate_success"] = comp["pgmigrate_success"]
        print(f"frag round {rnd} {driver:4s} ({time.monotonic() - t_guest:.0f} s in the "
              "guest): " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in obs.items()),
            flush=True)
        return obs, g.kernel_problems()


def frag(moddir):
    """FRAG_ROUNDS rounds of C and Rust, a fresh guest each, the order alternating."""
    res = {"C": [], "Rust": []}
    problems = []
    for rnd in range(FRAG_ROUNDS):
        for driver in ("C", "Rust") if rnd % 2 == 0 else ("Rust", "C"):
            obs, more = frag_one(driver, moddir, rnd)
            res[driver].append(obs)
            problems += more
    return res, problems


# What frag_report() prints: key, label, format.
FRAG_ROWS = (
    ("free_2m_blocks_at_boot", "free 2 MiB blocks after boot", "{:6.0f}"),
    ("free_2m_blocks_undrained", "free 2 MiB blocks, lists as left", "{:6.0f}"),
    ("pcp_mib_undrained", "  free on per-CPU lists then, MiB", "{:6.1f}"),
    ("free_2m_blocks", "free 2 MiB blocks, lists drained", "{:6.0f}"),
    ("pcp_pages", "  left on per-CPU lists, pages", "{:6.0f}"),
    ("pcp_above_floor", "  lists still above their floor", "{:6.0f}"),
    ("refreshes", "  stat_refresh writes to drain", "{:6.0f}"),
    ("free_mib_at_boot", "free memory before the cycles, MiB", "{:6.1f}"),
    ("free_mib", "free memory after (MemFree+lists)", "{:6.1f}"),
    ("in_blocks_pct", "% of it in free 2 MiB blocks", "{:6.1f}"),
    ("huge_pages_asked", "huge pages asked (free - 128 MiB)", "{:6.0f}"),
    ("huge_pages", "huge pages allocated", "{:6.0f}"),
    ("huge_pages_short", "  short of the ask", "{:6.0f}"),
    ("compact_stall", "  compaction stalls meanwhile", "{:6.0f}"),
    ("pgmigrate_success", "  pages migrated meanwhile", "{:6.0f}"),
    ("cycles_s", "seconds for the cycles", "{:6.1f}"),
)


def judge(c, r, more_is_better=True):
    """Rust against C on one figure: "not worse" when Rust's median is at least as good as
    C's; "within noise" when it is worse but Rust's best round reaches C's worst (the ranges
    overlap); "WORSE" otherwise."""
    if not more_is_better:
        c, r = [-x for x in c], [-x for x in r]
    if statistics.median(r) >= statistics.median(c):
        return "not worse"
    if max(r) >= min(c):
        return "within noise"
    return "WORSE"


def frag_report(flavour, res):
    c, r = res["C"], res["Rust"]
    lines = [f"fragmentation ({flavour} kernel): {FRAG_CYCLES} cycles of inflating "
             f"{RAM_MIB // 2} MiB of the {RAM_MIB} MiB guest and deflating it, page cache "
             f"dropped; {FRAG_ROUNDS} rounds, a fresh guest per driver and round "
             "(median min max over the rounds)",
             f"{'':36s} {'C':>20s}   {'Rust':>20s}"]
    for key, what, fmt in FRAG_ROWS:
        cells = [" ".join(fmt.format(v) for v in (statistics.median(xs), min(xs), max(xs)))
                 for xs in ([o[key] for o in c], [o[key] for o in r])]
        lines.append(f"  {what:34s} {cells[0]}   {cells[1]}")
    verdicts = {what: judge([o[key] for o in c], [o[key] for o in r], more)
                for key, what, more in (
                    ("free_2m_blocks", "free 2 MiB blocks, lists drained", True),
                    ("huge_pages", "huge pages allocated", True),
                    ("huge_pages_short", "huge pages short of the ask", False))}
    for what, v in verdicts.items():
        lines.append(f"  Rust against C, {what}: {v}")
    # What the huge page count also depends on: how much memory the guest has free at all.
    less = {key: statistics.median(o[key] for o in c) - statistics.median(o[key] for o in r)
            for key in ("free_mib_at_boot", "free_mib")}
    lines.append(f"  free memory, C minus Rust (medians): {less['free_mib_at_boot']:+.1f} MiB "
                 f"before the cycles, {less['free_mib']:+.1f} MiB after")
    ok = "WORSE" not in verdicts.values()
    if not ok:
        lines.append("  Rust WORSE than C (beyond the spread of the rounds)")
    elif "within noise" in verdicts.values():
        lines.append("  Rust not worse than C beyond the spread of the rounds")
    else:
        lines.append("  Rust not worse than C")
    return "\n".join(lines), ok


def balloon_bench(flavour, kdir, out, ring):
    """The balloon table on one kernel; with `ring`, the ring micro-benchmark in the same
    guest first.  Returns what main() prints."""
    os.environ["KDIR"] = kdir
    moddir = os.path.join(out, "mods")
    results = {d: [] for d in DRIVERS}
    traces = {}
    profile = {}  # Rust configurations: inflate, deflate, inflate, deflate...
    ring_res = None
    with vm.Guest(f"bench-{flavour}", memory=f"{RAM_MIB}M", cpus=2, moddir=moddir) as g:
        g.sh("uname -v")
        if ring:
            ring_res = ring_bench(g, out)
        for rep in range(REPS):
            for driver in DRIVERS if rep % 2 == 0 else DRIVERS[::-1]:
                trace = []
                inf, dfl = run_one(g, driver, trace, profile)
                results[driver].append((inf, dfl))
                traces.setdefault(driver, trace)
                print(f"{flavour} rep {rep} {driver:25s}: inflate {inf[0]:6.2f}s "
                      f"({inf[1]:5.2f}s CPU), deflate {dfl[0]:6.2f}s ({dfl[1]:5.2f}s CPU)",
                      flush=True)
        problems = g.kernel_problems()
    return results, traces, profile, ring_res, problems


def balloon_report(flavour, results, profile):
    """The balloon table of one kernel; returns its lines and (C, Rust) inflate+deflate
    medians."""
    pages = DELTA // 4096
    lines = [f"balloon, {flavour} kernel: inflate then deflate {DELTA // b.MiB} MiB, "
             f"{RAM_MIB} MiB guest, {REPS} runs per driver, interleaved "
             "(seconds: median min max)",
             f"{'':18s} {'C':>23s}   {'Rust':>23s}   Rust/C"]
    med = {}
    for i, what in enumerate(("inflate", "deflate")):
        for j, unit in enumerate(("wall", "guest CPU")):
            c = [r[i][j] for r in results["C"]]
            r = [r[i][j] for r in results["Rust"]]
            med[(what, unit)] = (statistics.median(c), statistics.median(r))
            ratio = statistics.median(r) / statistics.median(c) if statistics.median(c) else 0
            lines.append(f"{what + ' ' + unit:18s} {fmt_stats(c)}   {fmt_stats(r)}   "
                         f"{ratio:5.2f}")
    for what in ("inflate", "deflate"):
        c, r = med[(what, "wall")]
        lines.append(f"{what} pages/s          C {pages / c:9.0f}   Rust {pages / r:9.0f}")
    tot_c = med[("inflate", "wall")][0] + med[("deflate", "wall")][0]
    tot_r = med[("inflate", "wall")][1] + med[("deflate", "wall")][1]
    lines.append(f"inflate+deflate     C {tot_c:6.2f}s  Rust {tot_r:6.2f}s  "
                 f"speed-up C/Rust {tot_c / tot_r:5.2f}x")
    # The ratio within each rep (C and Rust runs next to each other in time), whose median
    # a load that comes and goes disturbs less.
    per_rep = [(c[0][0] + c[1][0]) / (r[0][0] + r[1][0])
               for c, r in zip(results["C"], results["Rust"])]
    lines.append("  per rep C/Rust: " + ", ".join(f"{x:5.2f}" for x in per_rep))
    for driver in DRIVERS[2:]:
        inf = statistics.median(r[0][0] for r in results[driver])
        dfl = statistics.median(r[1][0] for r in results[driver])
        lines.append(f"{driver + ':':27s} inflate {inf:6.2f}s, deflate {dfl:6.2f}s, "
                     f"total {inf + dfl:6.2f}s ({inf + dfl - tot_r:+.2f}s against Rust), "
                     f"speed-up over C {tot_c / (inf + dfl):5.2f}x")
    lines.append("where the Rust driver's time goes (debugfs counters, medians; the rest of "
                 "the wall time is the worker's scheduling and QMP polling):")
    for driver, runs_all in profile.items():
        for i, what in enumerate(("inflate", "deflate")):
            runs = runs_all[i::2]
            m = {k: statistics.median(r[k] for r in runs) for k in PROFILE}
            lines.append(f"  {driver:25s} {what}: {m['messages']:5.0f} messages; "
                         + ", ".join(f"{k[:-3]} {m[k] / 1e9:.3f}s" for k in PROFILE[1:]))
    return lines, tot_c, tot_r


def plot(traces, path, flavour):
    """Balloon size over time for each driver: inflate and deflate side by side, each from
    its QMP command."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, phase, title in zip(axes, (0, 1), ("inflate by 1 GiB", "deflate by 1 GiB")):
        for name, trace in traces.items():
            ax.plot([s for s, _ in trace[phase]], [(RAM - a) / b.MiB for _, a in trace[phase]],
                    drawstyle="steps-post", label=name)
        ax.set_xlabel("seconds since the QMP balloon command")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("balloon size (MiB)")
    axes[1].legend()
    fig.suptitle(f"{RAM_MIB} MiB guest under TCG, {flavour} kernel, same VM, first run of each "
                 "driver")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def frag_main():
    """BENCH_ONLY=frag: the fragmentation runs only, on the kernels of BENCH_FRAG_KERNELS."""
    problems = []
    worse = False
    for flavour, kdir, out in KERNELS:
        if flavour not in FRAG_KERNELS:
            continue
        os.environ["KDIR"] = kdir
        fr, more = frag(os.path.join(out, "mods"))
        problems += more
        text, ok = frag_report(flavour, fr)
        worse = worse or not ok
        print("\n" + text, flush=True)
    if problems:
        print("kernel problems:\n" + "\n".join(problems))
        return 1
    return 0


def main():
    if ONLY == "ring":
        return ring_main()
    assert KERNELS, "BENCH_SPEC names no kernel (run make bench)"
    if ONLY == "frag":
        return frag_main()
    outdir = os.path.join(os.environ.get("VIRTIO_RS_CACHE", "/var/tmp"), "bench")
    os.makedirs(outdir, exist_ok=True)
    report = []
    problems = []
    verdict = None
    flavours = [k[0] for k in KERNELS]
    # The ring micro-benchmark on the checked kernel (where its history was measured); the
    # verdict on the production one.
    ring_on = "checked" if "checked" in flavours else flavours[0]
    verdict_on = "prod" if "prod" in flavours else flavours[-1]
    for flavour, kdir, out in KERNELS:
        results, traces, profile, ring, more = balloon_bench(flavour, kdir, out,
                                                             ring=flavour == ring_on)
        problems += more
        lines, tot_c, tot_r = balloon_report(flavour, results, profile)
        if ring is not None:
            icount, more = ring_icount(out)
            problems += more
            lines += [ring_report(ring), ring_report(icount, icount=True)]
            mods = os.path.join(out, "mods")
            sizes = {m: os.path.getsize(os.path.join(mods, f"{m}.ko"))
                     for m in ("virtio_ring_rs", "virtio_pci_rs", "virtio_balloon_rs")}
            lines.append("module sizes: " + ", ".join(f"{m}.ko {s} bytes"
                                                      for m, s in sizes.items()))
        png = os.path.join(outdir, f"balloon-c-vs-rust-{flavour}.png")
        if plot(traces, png, flavour):
            lines.append(f"plot: {png}")
        if flavour in FRAG_KERNELS:
            fr, more = frag(os.path.join(out, "mods"))
            problems += more
            text, ok = frag_report(flavour, fr)
            lines.append(text)
        if flavour == verdict_on:
            verdict = (flavour, tot_c, tot_r)
        report += [""] + lines
        # Each kernel's table as soon as it is measured.
        print("\n".join([""] + lines), flush=True)
    print("\n==== all kernels ====")
    print("\n".join(report))
    flavour, tot_c, tot_r = verdict
    print(f"\nverdict ({flavour} kernel): inflate+deflate 1 GiB: Rust {tot_r:.2f} s "
          f"(goal <= 1.0 s), C {tot_c:.2f} s, C/Rust {tot_c / tot_r:.2f}x (goal >= 10)")
    return toollib.exit_status(problems)


if __name__ == "__main__":
    sys.exit(main())
