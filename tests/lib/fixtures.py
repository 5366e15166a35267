# SPDX-License-Identifier: GPL-2.0
"""What the conftest files of the integration and the stress tests share: the order of the
test files and the check that fails a test during which the kernel complained.

A conftest imports ``no_kernel_problems`` (pytest then uses it as an autouse fixture of that
directory) and calls ``sort_by_file`` from its ``pytest_collection_modifyitems``.
"""

import pytest

import vm


def sort_by_file(items, order):
    """Sort the collected `items` by the position of their file in `order` (file names
    without ``.py``; files not named come last).  Stable: the order inside a file is kept."""
    def rank(item):
        name = item.module.__name__.split(".")[-1]
        return order.index(name) if name in order else len(order)
    items.sort(key=rank)


@pytest.fixture(autouse=True)
def no_kernel_problems(request):
    """Fail the test if the kernel complained while it ran: a warning, BUG, Oops, KASAN,
    lockdep, hung-task or kmemleak report (``vm.KERNEL_PROBLEMS``)."""
    g = request.getfixturevalue("guest") if "guest" in request.fixturenames else None
    if g is not None:
        g.new_kernel_log()
    yield
    if g is not None:
        msg = vm.problems_message(g.new_kernel_log(), "kernel problems during the test")
        if msg is not None:
            pytest.fail(msg)
