# SPDX-License-Identifier: GPL-2.0
"""Fixtures of the integration tests: guests booted with QEMU's legacy balloon.

Every test that uses a guest also fails when the kernel logged a warning, BUG, Oops or a
lockdep report while it ran.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm  # noqa: E402


@pytest.fixture(scope="module")
def guest(request):
    """A guest shared by the tests of one file (boots are slow under TCG)."""
    opts = getattr(request.module, "GUEST_OPTIONS", {})
    g = vm.Guest(request.module.__name__.split(".")[-1], **opts)
    try:
        g.start()
        yield g
    finally:
        g.cleanup()


@pytest.fixture(autouse=True)
def no_kernel_problems(request):
    """Fail the test if the kernel complained while it ran."""
    g = request.getfixturevalue("guest") if "guest" in request.fixturenames else None
    if g is not None:
        g.new_kernel_log()
    yield
    if g is not None:
        problems = g.kernel_problems()
        if problems:
            pytest.fail("kernel problems during the test:\n" + "\n".join(problems))
