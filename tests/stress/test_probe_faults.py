# SPDX-License-Identifier: GPL-2.0
"""Allocation failures in every probe (issue 13.2), with the kernel's fault injection (the
debug flavour has FAULT_INJECTION, FAILSLAB, FAIL_PAGE_ALLOC and FAULT_INJECTION_DEBUG_FS).

For each module's probe (virtio_ring_rs has none: its module init), the n-th allocation of
the thread that binds fails, for n = 1, 2, ... until the probe runs through without
reaching an n-th allocation (tests/stress/probe_faults_guest.py does the loop in the guest,
through the thread's `fail-nth` file; failslab and fail_page_alloc are set to count sleeping
and order-0 allocations too).  After every attempt, failed or not (a bound device is
unbound again):

- the module init: the module is not loaded and its debugfs directory is gone;
- the transport: the function has no driver and no auxiliary device is left;
- the balloon: no balloon state and no OOM notifier or shrinker is left (the test flavour's
  `virtio_balloon_rs_testing/live`), nor a debugfs directory;
- the device (read from its I/O BAR): no queue has a PFN, and it is not DRIVER_OK;
- MemTotal is whole;
- a failed attempt did fail an allocation (else something left from before broke it).

Allocations through register_irq_proc() (the /proc/irq files request_irq() creates) are
neither counted nor failed: a kernel bug there (see probe_faults_guest.py) is not this
project's path; the debug flavour has FAULT_INJECTION_STACKTRACE_FILTER for that.

Then kmemleak finds nothing, and the next ordinary bind works: the balloon follows a
target.  Every test also fails on any warning, BUG, KASAN or lockdep report (conftest).

The transport and ring come from the fault flavour (the guest's modules); the balloon from
the test flavour ($VIRTIO_RS_STRESS_KUNIT_DIR), for its `live` file.
"""

import json
import os
import shutil

import balloon as b
import vm

HERE = os.path.dirname(os.path.abspath(__file__))
KUNIT_DIR = os.environ.get("VIRTIO_RS_STRESS_KUNIT_DIR", "")
MODDIR = os.environ.get("VIRTIO_RS_STRESS_MODDIR", "")
DEBUGFS = "/sys/kernel/debug"
AUX_DEVICES = "/sys/bus/auxiliary/devices"


def guest_script(g):
    """The guest half, copied into the shared directory; returns its path there."""
    script = os.path.join(g.dir, "probe_faults_guest.py")
    shutil.copy(os.path.join(HERE, "probe_faults_guest.py"), script)
    return script


def fault_injection(g, on):
    """Make failslab and fail_page_alloc count every allocation of a task with fail-nth set
    (`on`), except those through register_irq_proc() (the filter, see the guest half), or
    restore their defaults.  Probability stays 0: only fail-nth fails anything."""
    wait, order = ("N", 0) if on else ("Y", 1)
    g.sh(f"for a in failslab fail_page_alloc; do "
         f"[ -d {DEBUGFS}/$a ] || {{ echo no $a: is FAULT_INJECTION_DEBUG_FS in the kernel?; "
         f"exit 1; }}; "
         f"echo {wait} > {DEBUGFS}/$a/ignore-gfp-wait; echo 0 > {DEBUGFS}/$a/verbose; done; "
         f"echo {order} > {DEBUGFS}/fail_page_alloc/min-order")
    out = g.sh(f"python3 {guest_script(g)} filter {'on' if on else 'off'}")
    if on:
        print(f"\nfault injection filter: {out.strip()}")


def loop(g, *args, timeout=1200):
    """Runs the guest half; returns its report."""
    out = g.sh(f"python3 {guest_script(g)} {' '.join(args)}", timeout=timeout)
    report = json.loads(out.strip().splitlines()[-1])
    print(f"\n{report['mode']}: {report['attempts']} attempts, {report['failed']} failed, "
          f"{report['seconds']}s")
    return report


def check(report):
    assert not report["problems"], "\n".join(report["problems"])
    assert report["clean"], (
        f"the probe never ran through without a failed allocation in {report['attempts']} "
        f"attempts ({report['seconds']}s)")
    assert report["failed"] > 0, report


def test_ring_module_init(guest):
    g = guest
    ko = os.path.join(MODDIR, "virtio_ring_rs.ko")
    assert os.path.exists(ko), "VIRTIO_RS_STRESS_MODDIR must name the fault-flavour .ko files"
    b.rmmod_all(g)
    # What the tests before left is not this file's business (the last stress test scans
    # for it): kmemleak forgets it.
    g.sh(f"echo scan > {vm.KMEMLEAK} && echo clear > {vm.KMEMLEAK}", timeout=900)
    fault_injection(g, True)
    try:
        report = loop(g, "ring", ko)
    finally:
        fault_injection(g, False)
    check(report)


def problem_reports(g):
    """The kernel's complaints since the last look, each with the 40 lines after it (its
    stack), taken so that the autouse check does not stop at the first."""
    lines = g.new_kernel_log()
    return ["\n".join(lines[i:i + 40]) for i, l in enumerate(lines)
            if vm.KERNEL_PROBLEMS.search(l)]


def unload(g):
    """Unloads the modules, saying why one stays.  udev first finishes the events the
    attempts raised: each auxiliary device a bind added makes it run `modprobe
    virtio_balloon_rs`, which, run after the rmmod, loads the fault flavour's balloon driver
    (and virtio_ring_rs) again."""
    g.sh("udevadm settle -t 180", timeout=240)
    rc, out = g.run("for m in virtio_balloon_rs virtio_pci_rs virtio_ring_rs; do "
                    "grep -q \"^$m \" /proc/modules && { rmmod $m || "
                    "grep \"^$m \" /proc/modules; }; done; true", timeout=300, check=False)
    assert not b.loaded_rs_modules(g), out


def load_for_binding(g):
    """Loads the transport (fault flavour) and the balloon driver (test flavour, by path,
    with both the OOM notifier and the shrinker, so that their registration is failed too)
    with the function unbound, so that udev's autoload finds the balloon driver there;
    returns the function's address."""
    ko = os.path.join(KUNIT_DIR, "virtio_balloon_rs.ko")
    assert os.path.exists(ko), "VIRTIO_RS_STRESS_KUNIT_DIR must name the test-flavour .ko files"
    unload(g)
    bdf = g.balloon_bdf()
    g.unbind(bdf)
    b.set_target(g, b.RAM)
    # The balloon driver before the transport: loading the transport binds the function at
    # once (driver_override), and udev would load the fault flavour's balloon driver for the
    # auxiliary device it adds, before an insmod after it.
    g.sh(f"echo virtio_pci_rs > /sys/bus/pci/devices/{bdf}/driver_override && "
         f"modprobe virtio_ring_rs && insmod {ko} deflate_policy=3 && modprobe virtio_pci_rs",
         timeout=600)
    g.unbind(bdf)
    assert not g.sh(f"ls {AUX_DEVICES}").split()
    return bdf


def test_transport_probe(guest):
    g = guest
    # A transport that binds creates the balloon's auxiliary device, which the balloon driver
    # probes in the same thread: its allocations are counted (and failed) too.
    bdf = load_for_binding(g)
    # Kept enabled (through sysfs) while the loop runs, so that the probe's
    # pci_enable_device() only counts: enabling for real evaluates ACPI's _PRT, and an
    # allocation failed inside ACPICA there makes 7.2 free a namespace object it still uses
    # (KASAN: slab-use-after-free in acpi_ns_get_attached_object, seen here at the next
    # pci_disable_device()), a kernel bug outside this project's code.
    g.sh(f"echo 1 > /sys/bus/pci/devices/{bdf}/enable")
    fault_injection(g, True)
    try:
        report = loop(g, "pci", bdf)
    finally:
        fault_injection(g, False)
        g.sh(f"echo 0 > /sys/bus/pci/devices/{bdf}/enable")
    reports = problem_reports(g)
    assert not reports, "\n\n".join(reports)
    check(report)


def test_balloon_probe(guest):
    g = guest
    bdf = load_for_binding(g)
    g.sh(f"echo {bdf} > /sys/bus/pci/drivers/virtio_pci_rs/bind")
    aux = g.sh(f"ls {AUX_DEVICES}").split()
    assert len(aux) == 1, aux
    # The auxiliary bus names the driver "<module>.<driver>": take its directory from the link.
    drv = g.sh(f"readlink -f {AUX_DEVICES}/{aux[0]}/driver").strip()
    assert drv.endswith("virtio_balloon_rs"), drv
    g.sh(f"echo {aux[0]} > {drv}/unbind")
    fault_injection(g, True)
    try:
        report = loop(g, "balloon", bdf, aux[0], drv)
    finally:
        fault_injection(g, False)
    reports = problem_reports(g)
    assert not reports, "\n\n".join(reports)
    check(report)


def test_nothing_leaked_and_the_next_bind_works(guest):
    g = guest
    unload(g)
    report = g.kmemleak_report()
    assert report.strip() == "", "kmemleak found leaks:\n" + report
    before = b.meminfo(g)
    b.bind_rust(g)
    b.set_target(g, b.RAM - 64 * b.MiB)
    b.wait_actual(g, b.RAM - 64 * b.MiB, timeout=b.SLOW_WAIT)
    b.set_target(g, b.RAM)
    b.wait_actual(g, b.RAM, timeout=b.SLOW_WAIT)
    b.rmmod_all(g)
    assert b.meminfo(g)["MemTotal"] == before["MemTotal"]
