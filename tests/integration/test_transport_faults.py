# SPDX-License-Identifier: GPL-2.0
"""The transport when things fail, against QEMU's legacy balloon with 4 MSI-X vectors (enough
for one per queue), through the test flavour's switches in /sys/kernel/debug/virtio_pci_rs/:

- `fail_vectors`: the per-queue MSI-X mode fails after its vectors were allocated (a queue
  vector's `request_irq()` fails), then also the shared mode (the device reads back
  NO_VECTOR for the configuration vector).  Each time the transport must free the vectors
  before the next mode (no `WARN_ON_ONCE(dev->msix_enabled)`), end up in the next mode, and
  read the device configuration where the device puts it (0x18 with MSI-X, 0x14 without):
  the balloon follows its target.
- `fail_find_vqs`: `find_vqs` fails after every queue address was programmed.  The
  transport must deactivate the queues before their memory goes: a driver loaded again gets
  its queues (instead of EBUSY "already active") and works.
- unbind leaves no buffer in flight (the statistics buffer the device holds is detached).
- `gone`: the function looks surprise-removed (all-ones reads, `pci_device_is_present()`
  false).  The first all-ones read marks every queue broken at once, which wakes the driver,
  so that unbind waits for nothing (no 5 s timeout per wait); a function back from the dead
  works again.

The modules come from the test flavour (`$VIRTIO_RS_KUNIT_DIR`)."""

import os
import time

import balloon as b

RAM = 1024 * b.MiB
KUNIT_DIR = os.environ.get("VIRTIO_RS_KUNIT_DIR")
SW = "/sys/kernel/debug/virtio_pci_rs"
AUX = "/sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*"
# Per-queue vectors possible; the test flavour's switches (shared guest, see conftest).
BALLOON = {"vectors": 4}
FLAVOUR = "kunit"


def switch(g, name, value):
    g.sh(f"echo {value} > {SW}/{name} && [ $(cat {SW}/{name}) = {value} ]")


def bound_log(g):
    """Binds the function to the Rust transport; returns the kernel log of the binding."""
    g.new_kernel_log()
    b.bind_rust(g)
    return "\n".join(g.new_kernel_log())


def follows_target(g, target=896 * b.MiB):
    """The balloon goes to `target` and back: it read the target where the device put it."""
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=180)
    want = (RAM - target) // 4096
    st = b.status(g)
    assert st["target_pages"] == want and st["actual_pages"] == want, st
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=180)


def test_switches_exist(guest):
    guest.sh("modprobe virtio_pci_rs")
    rc, _ = guest.run(f"[ -w {SW}/fail_vectors ]", check=False)
    assert rc == 0, ("no test switches: the guest runs the production modules; set "
                     "VIRTIO_RS_KUNIT_DIR to the output of scripts/build-flavour kunit")


def test_per_queue_vectors_without_faults(guest):
    log = bound_log(guest)
    assert "one vector per queue" in log, log
    follows_target(guest)
    # The device holds the statistics buffer; unbind detaches it after the reset instead of
    # leaving it to the ring's "destroyed with buffers still in flight" warning.
    st = b.status(guest)
    assert st["stats_sent"] >= 1, st
    guest.new_kernel_log()
    guest.unbind(guest.balloon_bdf())
    log = "\n".join(guest.new_kernel_log())
    assert "still in flight" not in log, log


def test_per_queue_failure_falls_back_to_the_shared_vector(guest):
    switch(guest, "fail_vectors", 1)
    try:
        log = bound_log(guest)
    finally:
        switch(guest, "fail_vectors", 0)
    assert "one vector for all queues" in log, log
    follows_target(guest)
    guest.unbind(guest.balloon_bdf())


def test_msix_failures_fall_back_to_intx(guest):
    switch(guest, "fail_vectors", 2)
    try:
        log = bound_log(guest)
    finally:
        switch(guest, "fail_vectors", 0)
    assert "using the INTx line" in log and "bytes, INTx" in log, log
    follows_target(guest)
    guest.unbind(guest.balloon_bdf())


def test_find_vqs_failure_after_programming_leaves_the_queues_inactive(guest):
    b.bind_rust(guest)
    guest.sh("rmmod virtio_balloon_rs")
    switch(guest, "fail_find_vqs", 1)
    guest.new_kernel_log()
    # The driver's probe fails (modprobe itself succeeds: the module loads, the device
    # stays without a driver).
    guest.sh("modprobe virtio_balloon_rs; sleep 1")
    log = "\n".join(guest.new_kernel_log())
    assert "find_vqs fails after programming the queues" in log, log
    assert guest.run(f"[ -e {AUX}/driver ]", check=False)[0] != 0
    assert guest.sh(f"cat {SW}/fail_find_vqs").strip() == "0"
    # Loaded again, the driver gets its queues: none was left active.
    guest.sh("rmmod virtio_balloon_rs && modprobe virtio_balloon_rs")
    guest.sh(f"for i in $(seq 150); do [ -e {AUX}/driver ] && exit 0; sleep 0.2; done; exit 1",
             timeout=60)
    log = "\n".join(guest.new_kernel_log())
    assert "already active" not in log, log
    follows_target(guest)
    guest.unbind(guest.balloon_bdf())


def unbind_seconds(g, bdf):
    """Unbinds `bdf` from its driver; returns how long the kernel took, timed in the guest
    (the host's view adds the latency of each guest command, seconds under TCG)."""
    out = g.sh(f"t0=$(cut -d' ' -f1 /proc/uptime); "
               f"echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; "
               f"t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1; "
               f"! [ -e /sys/bus/pci/devices/{bdf}/driver ]")
    t0, t1 = (float(x) for x in out.split()[-2:])
    return t1 - t0


def test_surprise_removal_breaks_the_queues_at_once(guest):
    bdf = b.bind_rust(guest)
    total = b.meminfo(guest)["MemTotal"]
    b.set_target(guest, 768 * b.MiB)
    b.wait_actual(guest, 768 * b.MiB)
    guest.new_kernel_log()
    switch(guest, "gone", 1)
    try:
        # A new target: the configuration interrupt comes (QEMU's device is still there), the
        # driver reads num_pages and gets all ones.
        b.set_target(guest, RAM)
        deadline = time.monotonic() + 30
        log = ""
        while "the device is gone" not in log:
            assert time.monotonic() < deadline, log
            time.sleep(0.5)
            log += "\n".join(guest.new_kernel_log()) + "\n"
        # What the hotplug core does next: unbind, which must wait for no device.
        took = unbind_seconds(guest, bdf)
        log += "\n".join(guest.new_kernel_log())
    finally:
        switch(guest, "gone", 0)
    assert log.count("the device is gone") == 1, log
    assert "handed nothing back" not in log, log
    assert took < 2, f"unbind took {took:.2f}s:\n{log}"
    assert b.meminfo(guest)["MemTotal"] == total
    # The function is back: the transport resets it at probe and it works.
    b.bind_rust(guest)
    follows_target(guest)
    # Gone with nothing read since: PCI unbind finds it out first.
    b.set_target(guest, 896 * b.MiB)
    b.wait_actual(guest, 896 * b.MiB)
    guest.new_kernel_log()
    switch(guest, "gone", 1)
    try:
        took = unbind_seconds(guest, bdf)
    finally:
        switch(guest, "gone", 0)
    log = "\n".join(guest.new_kernel_log())
    assert log.count("the device is gone") == 1, log
    assert "handed nothing back" not in log, log
    assert took < 2, f"unbind took {took:.2f}s:\n{log}"
    assert b.meminfo(guest)["MemTotal"] == total
    b.set_target(guest, RAM)
    b.bind_rust(guest)
    follows_target(guest)
    guest.unbind(bdf)
    guest.sh("rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs")
