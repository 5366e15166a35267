#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""What movable balloon pages cost: this tree's Rust balloon (movable pages on the balloon
core's list) against a baseline build of the modules (BENCH_BASELINE, a directory holding the
three .ko files of another commit, e.g. the last one before page migration), in one guest.

Each run inflates the balloon by 1 GiB and deflates it again CYCLES times (default 5: one
cycle takes about 0.5 s here, and `actual` is polled every 0.01 s), each phase timed as `make bench`
does (from the QMP command to query-balloon's `actual` reaching the target), REPS times per
build, interleaved.  Prints medians, and the verdict: the median over the reps of the ratio this tree
/ baseline of the inflate+deflate time of the two runs of a rep, which sit next to each other in
time, so that a load that comes and goes on a shared machine (1-3x here) cancels out of each
ratio instead of landing in one build's median.  `make bench` runs it when BENCH_BASELINE_REV
is set.
"""

import os
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
BASELINE = os.environ.get("BENCH_BASELINE", "")
CYCLES = int(os.environ.get("BENCH_CYCLES", "5"))
BUILDS = ("this tree", "baseline")
# This tree's modules (scripts/bench builds them per kernel; default: the work tree's).
MODDIR = os.environ.get("BENCH_MODDIR") or None


def load(g, build):
    """Bind the balloon to the Rust stack of `build`."""
    bdf = g.balloon_bdf()
    if g.driver_of(bdf) == "virtio_pci_rs":
        g.unbind(bdf)
    b.rmmod_all(g)
    if build == "baseline":
        for m in ("virtio_ring_rs", "virtio_balloon_rs", "virtio_pci_rs"):
            g.sh(f"insmod /tmp/baseline/{m}.ko")
    else:
        g.sh("modprobe virtio_balloon_rs")
    b.bind_rust(g)


def timed(g, target):
    t0 = time.monotonic()
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=600, poll=0.01)
    return time.monotonic() - t0


def main():
    if not os.path.exists(os.path.join(BASELINE, "virtio_balloon_rs.ko")):
        print("BENCH_BASELINE: a directory with the baseline's .ko files", file=sys.stderr)
        return 2
    res = {k: [] for k in BUILDS}
    with vm.Guest("bench-movable", memory=f"{RAM_MIB}M", cpus=2, boot_timeout=900,
                  moddir=MODDIR) as g:
        g.sh(f"mkdir -p /tmp/baseline && cp {BASELINE}/*.ko /tmp/baseline/")
        for rep in range(REPS):
            for build in BUILDS if rep % 2 == 0 else BUILDS[::-1]:
                load(g, build)
                b.set_target(g, RAM)
                b.wait_actual(g, RAM)
                inf = dfl = 0.0
                for _ in range(CYCLES):
                    inf += timed(g, RAM - DELTA)
                    st = b.status(g)
                    assert st["pages_held"] == DELTA // 4096, st
                    dfl += timed(g, RAM)
                res[build].append((inf, dfl))
                print(f"rep {rep} {build:10s}: inflate {inf:6.2f}s, deflate {dfl:6.2f}s",
                      flush=True)
        problems = g.kernel_problems()
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for k, v in res.items()}
    for k, (inf, dfl) in med.items():
        print(f"{k:10s}: inflate {inf:6.2f}s, deflate {dfl:6.2f}s, total {inf + dfl:6.2f}s "
              f"({CYCLES} cycles, medians of {REPS})")
    ratios = [sum(t) / sum(base) for t, base in zip(res["this tree"], res["baseline"])]
    ratio = statistics.median(ratios)
    print("per rep, this tree / baseline: " + ", ".join(f"{r:4.2f}" for r in ratios))
    line = (f"this tree: inflate+deflate takes {ratio:4.2f}x the baseline's time "
            f"({(ratio - 1) * 100:+.1f} %, median of the per-rep ratios)")
    goal = os.environ.get("BENCH_GOAL_PCT")
    if goal:
        ok = (ratio - 1) * 100 <= float(goal)
        line += f"; goal at most +{goal} %: " + ("met" if ok else "NOT met")
    print(line)
    return toollib.exit_status(problems)


if __name__ == "__main__":
    sys.exit(main())
