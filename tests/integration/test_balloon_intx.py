# SPDX-License-Identifier: GPL-2.0
"""The same round trip with INTx only (QEMU `vectors=0`): no MSI-X, the shared line and ISR."""

import balloon as b
import balloon_cases

BALLOON = {"vectors": 0}  # INTx only


def test_rust_transport_falls_back_to_intx(guest):
    b.bind_rust(guest)
    log = "\n".join(guest.new_kernel_log())
    assert "INTx" in log and "balloon ready" in log, log


def test_inflate_to_512m_and_back_intx(guest):
    balloon_cases.inflate_and_deflate(guest, 1024 * b.MiB, 512 * b.MiB)
