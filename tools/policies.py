#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make bench-policies: what each deflate policy does under memory pressure, measured.

One guest (1 GiB, QEMU's legacy balloon with deflate-on-oom=on).  For the C driver and for
each `deflate_policy` of the Rust driver (1 oom, 2 shrinker, 3 both, 4 none), REPS times:
inflate until about 64 MiB are available, run a memory hog that touches HOG_MIB MiB, and
record whether the hog survived, how long it took, how many OOM kills the kernel counted,
how much memory the balloon gave back (QMP `actual` before and after) and, for Rust, through
which hook (debugfs).  Then the target goes back to 1 GiB.  Prints one table.
"""

import os
import statistics
import sys
import time

import toollib  # first: puts tests/lib on the module path
import balloon as b
import vm

RAM = 1024 * b.MiB
HOG_MIB = int(os.environ.get("POLICY_HOG_MIB", "200"))
REPS = int(os.environ.get("POLICY_REPS", "2"))
POLICIES = {1: "oom", 2: "shrinker", 3: "both", 4: "none"}


def one_run(g, rust):
    g.sh("sync; echo 3 > /proc/sys/vm/drop_caches")
    b.squeeze(g, RAM, timeout=300)
    before = b.actual(g)
    kills = b.oom_kills(g)
    st0 = b.status(g) if rust else None
    t0 = time.monotonic()
    rc, _ = g.run(f"python3 -c \"x = b'\\x01' * ({HOG_MIB} << 20); print(len(x))\"",
                  timeout=600, check=False)
    secs = time.monotonic() - t0
    time.sleep(1)
    row = {
        "survived": rc == 0,
        "secs": secs,
        "kills": b.oom_kills(g) - kills,
        "given_mib": (b.actual(g) - before) / b.MiB,
    }
    if rust:
        st1 = b.status(g)
        row["oom_mib"] = (st1["oom_deflated_pages"] - st0["oom_deflated_pages"]) * 4096 / b.MiB
        row["shrinker_mib"] = (st1["shrinker_deflated_pages"]
                               - st0["shrinker_deflated_pages"]) * 4096 / b.MiB
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=300)
    return row


def check_log(g, when):
    """Save the whole kernel log if the kernel complained (first time only)."""
    log = g.sh("dmesg")
    if vm.KERNEL_PROBLEMS.search(log):
        path = os.path.join(os.environ.get("VIRTIO_RS_CACHE", "/var/tmp"), "policies-dmesg.log")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(f"first seen after: {when}\n{log}")
            print(f"kernel problem after {when}: log in {path}", flush=True)


def main():
    results = {}
    with vm.Guest("policies", memory="1G", cpus=2,
                  devices=(vm.LEGACY_BALLOON + ",deflate-on-oom=on",)) as g:
        bdf = g.balloon_bdf()
        b.bind_c(g)
        results["C (OOM notifier)"] = [one_run(g, False) for _ in range(REPS)]
        g.unbind(bdf)
        check_log(g, "C")
        for pol, name in POLICIES.items():
            g.run("rmmod virtio_balloon_rs", check=False)
            g.sh(f"modprobe virtio_balloon_rs deflate_policy={pol}")
            b.bind_rust(g)
            results[f"Rust {name}"] = [one_run(g, True) for _ in range(REPS)]
            g.unbind(bdf)
            check_log(g, f"Rust {name}")
            print(f"{name}: {results[f'Rust {name}']}", flush=True)
        problems = g.kernel_problems()
    print(f"\ndeflate under pressure: 1 GiB guest squeezed to ~64 MiB available, then a "
          f"{HOG_MIB} MiB hog; {REPS} runs each (medians)")
    print(f"{'driver / policy':20s} {'hog ok':>7s} {'hog s':>7s} {'OOM kills':>9s} "
          f"{'MiB given back':>14s} {'via OOM':>8s} {'via shrinker':>12s}")
    for name, runs in results.items():
        ok = sum(r["survived"] for r in runs)
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        oom = f"{med('oom_mib'):8.1f}" if "oom_mib" in runs[0] else f"{'-':>8s}"
        shr = f"{med('shrinker_mib'):12.1f}" if "shrinker_mib" in runs[0] else f"{'-':>12s}"
        print(f"{name:20s} {ok:>3d}/{len(runs):<3d} {med('secs'):7.2f} "
              f"{sum(r['kills'] for r in runs):9d} {med('given_mib'):14.1f} {oom} {shr}")
    return toollib.exit_status(problems)


if __name__ == "__main__":
    sys.exit(main())
