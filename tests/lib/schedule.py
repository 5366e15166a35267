# SPDX-License-Identifier: GPL-2.0
"""Deal the integration test files to N pytest runs that `make check` starts side by side.

Each run boots the guests its files need: the shared guest once if it has any file without
``GUEST_OPTIONS``, and one guest per file that has them.  The files go longest first to the
run that would finish first (longest-processing-time scheduling), by the seconds each file
took in a warm `make check` on this project's 2-core machines (three runs side by side,
production kernel), including the boot of a guest of its own; a file not in the table counts
as DEFAULT_S.  The shared guest's boot counts once per run that needs it.

Usage: schedule.py N FILE...   prints N lines (some possibly empty), the files of each run.
"""

import os
import sys

# Seconds per file (calls, fixtures and, for files with GUEST_OPTIONS, their boot).
SECONDS = {
    "test_reporting": 144, "test_balloon_hostile": 112, "test_hinting": 59,
    "test_transport_faults": 57, "test_rng": 52, "test_viommu": 43, "test_slow_ack": 66,
    "test_parity_c": 33, "test_balloon_pressure": 29, "test_migration": 28,
    "test_balloon_msix": 19, "test_balloon_intx": 12, "test_bringup": 11, "test_kunit": 6,
}
DEFAULT_S = 60
SHARED_BOOT_S = 30


def own_guest(path):
    with open(path) as f:
        return any(line.startswith("GUEST_OPTIONS") for line in f)


def deal(n, files):
    runs = [{"files": [], "load": 0.0, "shared": False} for _ in range(n)]
    weight = {f: SECONDS.get(os.path.basename(f)[:-3], DEFAULT_S) for f in files}
    for f in sorted(files, key=lambda f: (-weight[f], f)):
        shared = not own_guest(f)

        def finish(r):
            return r["load"] + weight[f] + (SHARED_BOOT_S if shared and not r["shared"] else 0)
        r = min(runs, key=finish)
        r["load"] = finish(r)
        r["shared"] = r["shared"] or shared
        r["files"].append(f)
    return runs


def main():
    n = int(sys.argv[1])
    for r in deal(n, sys.argv[2:]):
        print(" ".join(sorted(r["files"])))
        print(f"run: {r['load']:.0f} s expected, {len(r['files'])} files", file=sys.stderr)


if __name__ == "__main__":
    main()
