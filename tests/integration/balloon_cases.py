# SPDX-License-Identifier: GPL-2.0
"""Balloon scenarios shared by the MSI-X and INTx test files."""

import balloon as b


def inflate_and_deflate(g, ram=1024 * b.MiB, target=512 * b.MiB):
    before = b.meminfo(g)
    b.set_target(g, target)
    b.wait_actual(g, target)
    during = b.meminfo(g)
    ballooned_kb = (ram - target) // 1024
    # The guest lost about that much: free memory and (without DEFLATE_ON_OOM) MemTotal.
    assert before["MemFree"] - during["MemFree"] > 0.85 * ballooned_kb, (before, during)
    assert abs((before["MemTotal"] - during["MemTotal"]) - ballooned_kb) < 0.02 * ballooned_kb
    b.set_target(g, ram)
    b.wait_actual(g, ram)
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"]
    b.assert_free_memory_back(before, after, 0.1 * ballooned_kb)
