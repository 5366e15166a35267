#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Run every KUnit suite of the virtio-rs modules in a guest and count the test cases.

Boots one guest, loads the test flavour of the three modules (each module's suites run when
it loads), collects each suite's KTAP from debugfs and the kernel log, and prints one line
per test case and a final ``RESULT kunit <passed> <failed>`` line.  A suite that the sources
declare but that produced no result, or a kernel warning during the run, counts as a failure.
Usage: run.py <directory with the test-flavour .ko files>
"""

import glob
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import vm  # noqa: E402

SUITE_DECL = re.compile(r"#\[kunit_tests\((\w+)\)\]")
CASE = re.compile(r"^\s+(not ok|ok) \d+ (\S+)(.*)$")


def declared_suites():
    suites = []
    for path in glob.glob(os.path.join(vm.TOP, "**", "*.rs"), recursive=True):
        if "/tests/" in path or "/target/" in path:
            continue
        with open(path) as f:
            suites += SUITE_DECL.findall(f.read())
    return sorted(set(suites))


def parse_results(text):
    """(name, ok, note) for each test case of one suite's KTAP."""
    cases = []
    for line in text.splitlines():
        m = CASE.match(line)
        if m:
            status, name, rest = m.groups()
            skipped = "# SKIP" in rest
            cases.append((name, status == "ok" and not skipped, rest.strip()))
    return cases


def main():
    moddir = sys.argv[1]
    suites = declared_suites()
    passed = failed = 0
    with vm.Guest("kunit", devices=(vm.LEGACY_BALLOON,), moddir=moddir) as g:
        rc, out = g.run("modprobe virtio_balloon_rs && modprobe virtio_pci_rs", check=False)
        if rc != 0:
            print(f"FAIL kunit: loading the modules failed:\n{out}")
            failed += 1
        log = g.new_kernel_log()
        for suite in suites:
            d = f"/sys/kernel/debug/kunit/{suite}"
            # Suites run when their module loads (CONFIG_KUNIT_AUTORUN_ENABLED); on a kernel
            # built without autorun, run them through debugfs.
            rc, text = g.run(f"[ -s {d}/results ] || echo 1 > {d}/run 2>/dev/null; "
                             f"cat {d}/results", check=False, timeout=600)
            cases = parse_results(text) if rc == 0 else []
            if not cases:
                print(f"FAIL kunit {suite}: no results (suite did not run)")
                failed += 1
                continue
            for name, ok, note in cases:
                print(f"{'PASS' if ok else 'FAIL'} kunit {suite}.{name} {note}".rstrip())
                if ok:
                    passed += 1
                else:
                    failed += 1
                    # Show the assertion that failed.
                    for line in text.splitlines():
                        if "ASSERTION FAILED" in line or "Expected" in line:
                            print(f"    {line.strip()}")
        problems = g.kernel_problems(log)
        if problems:
            print("FAIL kunit: kernel problems while the suites ran:")
            for p in problems:
                print(f"    {p}")
            failed += 1
    print(f"RESULT kunit {passed} {failed}")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
