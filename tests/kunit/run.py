#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Run every KUnit suite of the virtio-rs modules in a guest of its own and count the cases.

Boots one guest, loads the test flavour of the three modules (each module's suites run when
it loads), hands each suite's KTAP to the kernel's parser (``tests/lib/ktap.py``) and prints
one line per test case and a final ``RESULT kunit <passed> <failed>`` line.  A suite that the
sources declare but that produced no result, or a kernel warning during the run, counts as a
failure.  ``make check`` runs the suites inside its integration guest instead
(``tests/integration/test_kunit.py``); this script is for running them alone.
Usage: run.py <directory with the test-flavour .ko files>
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import ktap  # noqa: E402
import vm  # noqa: E402


def main():
    moddir = sys.argv[1]
    failed = 0
    with vm.Guest("kunit", devices=(vm.LEGACY_BALLOON,), moddir=moddir) as g:
        rc, out = g.run("modprobe virtio_balloon_rs && modprobe virtio_pci_rs", check=False)
        if rc != 0:
            print(f"FAIL kunit: loading the modules failed:\n{out}")
            failed += 1
        passed, f = ktap.report(ktap.run_suites(g))
        failed += f
        problems = g.kernel_problems()
        if problems:
            print("FAIL kunit: kernel problems while the suites ran:")
            for p in problems:
                print(f"    {p}")
            failed += 1
    print(f"RESULT kunit {passed} {failed}")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
