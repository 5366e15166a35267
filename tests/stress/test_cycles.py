# SPDX-License-Identifier: GPL-2.0
"""Module churn: cycles of modprobe / inflate / deflate / rmmod of the Rust stack, then a
kmemleak scan (kmemleak forgot what boot left, see conftest).

Each cycle is three guest commands, with the host moving the balloon over QMP in between:
(1) modprobe virtio_balloon_rs and virtio_pci_rs (which binds the balloon function, given to
it once by `driver_override`) and wait until the balloon driver is bound; the host inflates by
4 MiB and waits for QEMU's `actual`; (2) read `MemTotal` and the driver's `pages_held`; the
host deflates; (3) unload the modules and read `MemTotal` and the modules left.  Then the host
reads what the cycle logged from the kernel log stream.  Cycles vary how they end: `rmmod` of
the balloon driver first, of the transport first (its device disappears under the balloon
driver), or with the balloon still inflated (the driver deflates at unbind, `actual` must go
back to 0).  After every cycle no module is left, `MemTotal` is back and the kernel log has no
problem.

The guest waits for nothing but the kernel between the commands: it sleeps in the agent's
doorbell while the host drives QEMU (an earlier version ran the cycle as one script that
polled the shared directory for the host's files, with a `sleep` process every 50 ms: that
kept a TCG vCPU busy forking while the balloon worked).  The guest side uses shell builtins
only, apart from the one `modprobe` and the one `rmmod` of each cycle.

`test_run_cycles` runs them all; `test_cycle[n]` then reports cycle n, so that the number of
cycles that passed is counted in the total.
"""

import os
import time

import pytest

import balloon as b
import vm

RAM = b.RAM
CYCLES = int(os.environ.get("VIRTIO_RS_STRESS_CYCLES", "100"))
INFLATE = 4 * b.MiB
# How often the host asks QEMU for `actual` while the balloon moves (QMP is cheap).
POLL_S = 0.02

# What the first tests learn, for the others.
base = {}
# Cycle number -> None when it passed, else why it failed.
results = {}
# Step -> seconds each cycle spent in it (the host's clock).
steps = {}

# One rmmod process, the modules in the variant's order (it goes on after a failure and
# exits non-zero).
RMMOD = {
    # deflated, the balloon driver goes first
    0: "rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs",
    # deflated, the transport goes first
    1: "rmmod virtio_pci_rs virtio_balloon_rs virtio_ring_rs",
    # still inflated: the driver deflates at unbind
    2: "rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs",
}

# Shell functions of the three commands (builtins only).
LIB = """
memtotal() {{
    while read -r k v _; do [ "$k" = MemTotal: ] && echo "MemTotal $v"; done < /proc/meminfo
}}
rs_modules() {{
    while read -r m _; do case $m in *_rs) echo "module $m" ;; esac; done < /proc/modules
}}
"""

LOAD = LIB + """
modprobe -a virtio_balloon_rs virtio_pci_rs || {{ echo "modprobe failed"; exit 1; }}
[ -e /sys/bus/pci/devices/{bdf}/driver ] || echo {bdf} > /sys/bus/pci/drivers_probe
# The transport's probe adds the balloon's auxiliary device, which the (loaded) balloon driver
# probes in the same thread: bound by now.  Waits (a little) only if not.
i=0
until [ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ]; do
    i=$((i + 1)); [ $i -gt 600 ] && {{ echo "the balloon did not bind"; exit 1; }}; sleep 0.1
done
"""

MEASURE = LIB + """
memtotal
for f in {status}; do
    while read -r k v; do [ "$k" = pages_held ] && echo "pages_held $v"; done < $f
done
# (The host checks that both values are there.)
exit 0
"""

UNLOAD = LIB + """
# udev loads virtio_balloon_rs for the auxiliary device the bind added: if its modprobe ran
# after the rmmod it would load the driver (and the ring) again.  It keeps /run/udev/queue
# while it has events to handle (what `udevadm settle` waits for; a builtin test is cheaper
# than running udevadm, and the event was read long ago).
i=0
while [ -e /run/udev/queue ]; do
    i=$((i + 1)); [ $i -gt 1200 ] && {{ echo "udev is still busy"; exit 1; }}; sleep 0.05
done
{rmmod} || {{ echo "rmmod failed"; rs_modules; exit 1; }}
memtotal
rs_modules
exit 0
"""


def test_baseline(guest):
    """The balloon function is given to the Rust transport for all cycles."""
    g = guest
    b.rmmod_all(g)
    base["bdf"] = bdf = g.balloon_bdf()
    g.sh(f"d=/sys/bus/pci/devices/{bdf}; echo virtio_pci_rs > $d/driver_override; "
         f"if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi; ! [ -e $d/driver ]")
    mem = b.meminfo(g)
    base["MemTotal"] = mem["MemTotal"]
    base["MemAvailable"] = mem["MemAvailable"]
    assert b.actual(g) == RAM


def step(name, t0):
    """Records the seconds since `t0` as step `name`; returns now."""
    now = time.monotonic()
    steps.setdefault(name, []).append(now - t0)
    return now


def values(out):
    """The `key number` lines of `out` as a dict."""
    pairs = (l.split() for l in out.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def one_cycle(g, n, log_mark):
    """Runs cycle `n`; returns the number of kernel log lines seen so far."""
    variant = n % 3
    t = time.monotonic()
    rc, out = g.run(LOAD.format(bdf=base["bdf"]), timeout=300, check=False)
    assert rc == 0, f"load: {out}"
    t = step("load and bind", t)
    b.set_target(g, RAM - INFLATE)
    b.wait_actual(g, RAM - INFLATE, timeout=60, poll=POLL_S)
    t = step("inflate", t)
    rc, out = g.run(MEASURE.format(status=b.STATUS), check=False)
    assert rc == 0, f"measure: {out}"
    info = values(out)
    t = step("measure", t)
    if variant != 2:
        b.set_target(g, RAM)
        b.wait_actual(g, RAM, timeout=60, poll=POLL_S)
        t = step("deflate", t)
    rc, out = g.run(UNLOAD.format(rmmod=RMMOD[variant]), timeout=300, check=False)
    assert rc == 0, f"unload: {out}"
    t = step("rmmod", t)
    if variant == 2:
        # The device's target is still the old one; the driver's `actual` went to 0.
        assert b.actual(g) == RAM
        b.set_target(g, RAM)
    assert b.actual(g) == RAM
    assert info.get("pages_held") == INFLATE // 4096, info
    assert base["MemTotal"] - info.get("MemTotal", 0) == INFLATE // 1024, info
    assert f"MemTotal {base['MemTotal']}" in out.splitlines(), out
    assert not [l for l in out.splitlines() if l.startswith("module ")], \
        f"modules left:\n{out}"
    # The kernel log streams to the host (tests/lib/vm.py): what the cycle logged.
    new = g.kernel_log().splitlines()[log_mark:]
    problems = g.kernel_problems(new)
    assert not problems, "kernel problems:\n" + vm.excerpt(new)
    step("host checks", t)
    return log_mark + len(new)


def test_run_cycles(guest):
    """All the cycles, recorded for `test_cycle`; a cycle that failed is cleaned up after
    (modules unloaded, target reset) so that the next one starts afresh.  Stops early only if
    the guest stops answering or the time budget of `make stress` runs out."""
    g = guest
    assert base, "test_baseline did not run"
    deadline = float(os.environ.get("VIRTIO_RS_STRESS_DEADLINE", "inf"))
    mark = len(g.kernel_log().splitlines())
    t0 = time.monotonic()
    for n in range(CYCLES):
        if time.time() > deadline:
            results[n] = "not run: the time budget of make stress ran out"
            continue
        try:
            mark = one_cycle(g, n, mark)
            results[n] = None
        except AssertionError as e:
            results[n] = str(e)
            print(f"\ncycle {n} failed: {e}")
            # udev may still load the balloon driver for the cycle's auxiliary device.
            g.sh("udevadm settle -t 60 || true", timeout=90)
            b.rmmod_all(g)
            b.set_target(g, RAM)
            mark = len(g.kernel_log().splitlines())
        except vm.GuestError as e:
            results[n] = f"the guest stopped answering: {e}"
            break
    done = sum(1 for r in results.values() if r is None)
    print(f"\n{done} of {CYCLES} cycles passed in {time.monotonic() - t0:.0f}s")
    if steps:
        print("mean seconds per cycle, by step: " + ", ".join(
            f"{name} {sum(v) / len(v):.2f}" for name, v in steps.items()))
    g.log_mark = mark
    # The conftest check sees what was logged after the last cycle, if anything.


@pytest.mark.parametrize("n", range(CYCLES))
def test_cycle(n):
    assert n in results, "not run (test_run_cycles stopped before it)"
    assert results[n] is None, results[n]


def test_no_memory_lost(guest):
    """After all the cycles the guest has the memory it had before them: `MemTotal`
    exactly, `MemAvailable` within 32 MiB (KASAN's quarantine of freed slab objects and
    kmemleak's metadata move it; a balloon leaked every cycle would show as 400 MiB)."""
    assert base, "test_baseline did not run"
    assert not b.loaded_rs_modules(guest)
    mem = b.meminfo(guest)
    assert mem["MemTotal"] == base["MemTotal"]
    assert mem["MemAvailable"] > base["MemAvailable"] - 32 * 1024, (base, mem)


def test_kmemleak_after_cycles(guest):
    """No unreferenced object (since boot: this covers the KUnit and fault tests too)."""
    assert base, "test_baseline did not run"
    report = guest.kmemleak_report()
    assert report.strip() == "", "kmemleak found leaks:\n" + report
