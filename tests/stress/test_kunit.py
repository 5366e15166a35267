# SPDX-License-Identifier: GPL-2.0
"""The KUnit suites of the modules on the debug kernel: the test flavour is loaded from its
own directory (each module's suites run when it loads), every suite the sources declare must
report, and every one of its cases must pass (a skipped case does not).  Then the test
flavour is unloaded, before the fault flavour is used by the other tests."""

import os
import sys

import pytest

import stress_lib as s

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kunit"))
import run  # noqa: E402  (tests/kunit/run.py: the suite declarations and the KTAP parser)

SUITES = run.declared_suites()
KUNIT_DIR = os.environ.get("VIRTIO_RS_STRESS_KUNIT_DIR", "")


def test_load_the_test_flavour(guest):
    assert os.path.exists(os.path.join(KUNIT_DIR, "virtio_ring_rs.ko")), \
        "VIRTIO_RS_STRESS_KUNIT_DIR must name the KUnit-flavour .ko files"
    s.rmmod_all(guest)
    # Dependency order by hand: insmod takes paths, not names.
    guest.sh(" && ".join(f"insmod {KUNIT_DIR}/{m}.ko"
                         for m in ("virtio_ring_rs", "virtio_pci_rs", "virtio_balloon_rs")),
             timeout=900)


@pytest.mark.parametrize("suite", SUITES)
def test_suite(guest, suite):
    d = f"/sys/kernel/debug/kunit/{suite}"
    text = guest.sh(f"[ -s {d}/results ] || echo 1 > {d}/run; cat {d}/results", timeout=900)
    cases = run.parse_results(text)
    assert cases, f"suite {suite} reported no case:\n{text}"
    for name, ok, note in cases:
        print(f"  {'PASS' if ok else 'FAIL'} {suite}.{name} {note}".rstrip())
    bad = [name for name, ok, _ in cases if not ok]
    assert not bad, f"failed: {bad}\n{text}"


def test_unload_the_test_flavour(guest):
    s.rmmod_all(guest)
