# SPDX-License-Identifier: GPL-2.0
"""The KUnit suites of the three modules, in the shared guest: the test flavour is loaded
(each module's suites run when it loads), every suite the sources declare must report, and
the kernel's KTAP parser (``tests/lib/ktap.py``) counts every case.  One test per suite here;
the cases themselves are counted as make check's KUnit tests: this file writes their lines and
a ``RESULT kunit <passed> <failed>`` line to ``$VIRTIO_RS_KUNIT_RESULT``."""

import os

import pytest

import ktap

FLAVOUR = "kunit"
SUITES = ktap.declared_suites()
RESULT = os.environ.get("VIRTIO_RS_KUNIT_RESULT")
_results = {}


def test_load_the_test_flavour(guest):
    # The transport's suite needs no device; the balloon's engine suite is pure logic.
    guest.sh("modprobe virtio_balloon_rs && modprobe virtio_pci_rs", timeout=600)
    _results.update({r[0]: r for r in ktap.run_suites(guest)})


@pytest.mark.parametrize("suite", SUITES)
def test_suite(suite):
    assert suite in _results, "the test flavour did not load"
    _, cases, errors, text = _results[suite]
    assert cases, f"suite {suite} reported no case:\n{text}"
    bad = [f"{c.name} ({c.status})" for c in cases if not c.ok]
    assert not bad and not errors, f"failed: {bad}, parser errors: {errors}\n{text}"


def test_unload_the_test_flavour(guest):
    guest.sh("rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs", timeout=300)
    # Every case, counted once: written for scripts/check (the KUnit line of make check).
    if RESULT:
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            passed, failed = ktap.report([_results.get(s, (s, [], 0, "")) for s in SUITES])
        with open(RESULT, "w") as f:
            f.write(buf.getvalue())
            f.write(f"RESULT kunit {passed} {failed}\n")
