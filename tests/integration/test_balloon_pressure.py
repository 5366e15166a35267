# SPDX-License-Identifier: GPL-2.0
"""Deflate on memory pressure: with QEMU's deflate-on-oom, the OOM notifier gives pages back
instead of an OOM kill; with deflate_policy=2, the shrinker does.  The device has 4 MSI-X
vectors here, so the transport gives each queue its own vector."""

import balloon as b

RAM = 1024 * b.MiB
BALLOON = {"deflate-on-oom": True, "vectors": 4}


def hog(g, mib):
    # Touch every page: a filled bytes object, not a lazily zeroed one.
    return g.run(f"python3 -c \"x = b'\\x01' * ({mib} << 20); print(len(x))\"",
                 timeout=300, check=False)


def test_per_queue_msix_vectors(guest):
    b.bind_rust(guest)
    log = "\n".join(guest.new_kernel_log())
    assert "one vector per queue" in log, log
    # Interrupts arrive on the queues' own vectors: inflate and deflate once.
    b.set_target(guest, RAM - 64 * b.MiB)
    b.wait_actual(guest, RAM - 64 * b.MiB)
    b.set_target(guest, RAM)
    b.wait_actual(guest, RAM)
    irqs = guest.sh("grep virtio_pci_rs /proc/interrupts")
    assert len(irqs.splitlines()) == 4, irqs


def deflates_under_pressure(g, counter):
    """Squeeze the guest, run a memory hog: no OOM kill, and `counter` shows the balloon gave
    pages back, which the host saw."""
    target = b.squeeze(g, RAM)
    kills = b.oom_kills(g)
    before = b.meminfo(g)
    mark = g.kernel_log_lines()
    rc, out = hog(g, 200)
    st = b.status(g)

    def seen():
        # What a failure needs to be understood: the balloon's counters, memory before the
        # hog, and the kernel's OOM report if there was one.
        oom = [l for l in g.kernel_log().splitlines()[mark:]
               if any(k in l for k in ("oom", "Out of memory", "Mem-Info", "balloon"))]
        return (f"status {st}\nmeminfo before the hog {before}\n"
                + "\n".join(oom[-40:]))

    try:
        assert rc == 0, f"hog: {out}\n{seen()}"
        assert b.oom_kills(g) == kills, seen()
        assert st[counter] > 0, seen()
        assert b.actual(g) > target
    finally:
        # Whatever happened, the next case starts from an empty balloon.
        b.set_target(g, RAM)
        b.wait_actual(g, RAM)


def test_oom_notifier_deflates_instead_of_killing(guest):
    deflates_under_pressure(guest, "oom_deflated_pages")
    guest.unbind(guest.balloon_bdf())
    guest.sh("rmmod virtio_balloon_rs")


def test_shrinker_deflates_under_pressure(guest):
    guest.sh("modprobe virtio_balloon_rs deflate_policy=2")
    b.bind_rust(guest)
    deflates_under_pressure(guest, "shrinker_deflated_pages")
