# SPDX-License-Identifier: GPL-2.0
"""The KUnit suites of the modules on the debug kernel: the test flavour is loaded from its
own directory (each module's suites run when it loads), every suite the sources declare must
report, and every one of its cases must pass (a skipped case does not).  Then the test
flavour is unloaded, before the fault flavour is used by the other tests."""

import os

import pytest

import balloon as b
import ktap  # (tests/lib: the suite declarations and the kernel's KTAP parser)

SUITES = ktap.declared_suites()
KUNIT_DIR = os.environ.get("VIRTIO_RS_STRESS_KUNIT_DIR", "")


def test_load_the_test_flavour(guest):
    assert os.path.exists(os.path.join(KUNIT_DIR, "virtio_ring_rs.ko")), \
        "VIRTIO_RS_STRESS_KUNIT_DIR must name the KUnit-flavour .ko files"
    b.rmmod_all(guest)
    # Dependency order by hand: insmod takes paths, not names.
    guest.sh(" && ".join(f"insmod {KUNIT_DIR}/{m}.ko"
                         for m in ("virtio_ring_rs", "virtio_pci_rs", "virtio_balloon_rs")),
             timeout=900)


@pytest.mark.parametrize("suite", SUITES)
def test_suite(guest, suite):
    [(_, cases, errors, text)] = ktap.run_suites(guest, [suite])
    assert cases, f"suite {suite} reported no case:\n{text}"
    for c in cases:
        print(f"  {c.status} {suite}.{c.name}")
    bad = [c.name for c in cases if not c.ok]
    assert not bad and not errors, f"failed: {bad}, parser errors: {errors}\n{text}"


def test_unload_the_test_flavour(guest):
    b.rmmod_all(guest)
