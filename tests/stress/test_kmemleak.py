# SPDX-License-Identifier: GPL-2.0
"""The last stress test: after everything else ran in the guest (KUnit, fault injection,
module churn, hot-unplug, memory storms), kmemleak finds no unreferenced object."""

import balloon as b


def test_no_leak_at_the_end(guest):
    b.rmmod_all(guest)
    report = guest.kmemleak_report()
    assert report.strip() == "", "kmemleak found leaks:\n" + report
