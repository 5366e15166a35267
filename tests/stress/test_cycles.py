# SPDX-License-Identifier: GPL-2.0
"""Module churn: cycles of modprobe / inflate / deflate / rmmod of the Rust stack, then a
kmemleak scan (kmemleak forgot what boot left, see conftest).

A guest command costs a round trip through the agent, so each cycle is one guest script
that waits, at each step, for a file the host creates once it has moved the balloon over
QMP: modprobe virtio_balloon_rs and virtio_pci_rs (which binds the balloon function, given
to it once by `driver_override`); the host inflates by 4 MiB; the script reads `MemTotal` and
the driver's `pages_held`; the host deflates; the script unloads the modules; the host reads
what the cycle logged from the kernel log stream.  Cycles vary how they end: `rmmod` of the
balloon driver first, of the transport first (its device disappears under the balloon
driver), or with the balloon still inflated (the driver deflates at unbind, `actual` must go back to 0).  After every cycle no
module is left, `MemTotal` is back and the kernel log has no problem.

`test_run_cycles` runs them all; `test_cycle[n]` then reports cycle n, so that the number of
cycles that passed is counted in the total.
"""

import os
import time

import pytest

import balloon as b
import stress_lib as s
import vm

RAM = s.RAM
CYCLES = int(os.environ.get("VIRTIO_RS_STRESS_CYCLES", "100"))
INFLATE = 4 * b.MiB

# What the first tests learn, for the others.
base = {}
# Cycle number -> None when it passed, else why it failed.
results = {}
# Step -> seconds each cycle spent in it (the guest's clock).
steps = {}

RMMOD = {
    # deflated, the balloon driver goes first
    0: "rmmod virtio_balloon_rs && rmmod virtio_pci_rs virtio_ring_rs",
    # deflated, the transport goes first
    1: "rmmod virtio_pci_rs && rmmod virtio_balloon_rs virtio_ring_rs",
    # still inflated: the driver deflates at unbind
    2: "rmmod virtio_balloon_rs && rmmod virtio_pci_rs virtio_ring_rs",
}

CYCLE = """
D={dir}; n={n}
# When each step ended (guest uptime), with shell builtins only: the host prints the means.
mark() {{ read t _ < /proc/uptime; echo "$1 $t" >> $D/times.$n; }}
mark start
wait_for() {{
    i=0
    while [ ! -e "$D/$1.$n" ]; do
        i=$((i + 1)); [ $i -gt 2400 ] && {{ echo "no $1 from the host"; exit 1; }}; sleep 0.05
    done
}}
modprobe virtio_balloon_rs && modprobe virtio_pci_rs || {{ echo "modprobe failed"; exit 1; }}
[ -e /sys/bus/pci/devices/{bdf}/driver ] || echo {bdf} > /sys/bus/pci/drivers_probe
i=0
until [ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ]; do
    i=$((i + 1)); [ $i -gt 600 ] && {{ echo "the balloon did not bind"; exit 1; }}; sleep 0.1
done
mark loaded
: > $D/up.$n
wait_for inflated
mark inflated
{{ grep MemTotal: /proc/meminfo; cat {status}; }} > $D/info.$n
: > $D/measured.$n
wait_for go
mark deflated
{rmmod} || {{ echo "rmmod failed"; exit 1; }}
mark unloaded
grep MemTotal: /proc/meminfo
grep _rs /proc/modules
exit 0
"""


def test_baseline(guest):
    """The balloon function is given to the Rust transport for all cycles."""
    g = guest
    s.rmmod_all(g)
    base["bdf"] = bdf = g.balloon_bdf()
    g.sh(f"d=/sys/bus/pci/devices/{bdf}; echo virtio_pci_rs > $d/driver_override; "
         f"if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi; ! [ -e $d/driver ]")
    mem = b.meminfo(g)
    base["MemTotal"] = mem["MemTotal"]
    base["MemAvailable"] = mem["MemAvailable"]
    assert b.actual(g) == RAM


def touch(g, name):
    open(os.path.join(g.dir, name), "w").close()


def one_cycle(g, n, log_mark):
    """Runs cycle `n`; returns the number of kernel log lines seen so far."""
    variant = n % 3
    k = s.start(g, CYCLE.format(dir=g.dir, n=n, bdf=base["bdf"], status=s.STATUS,
                                rmmod=RMMOD[variant]))
    try:
        return check_cycle(g, n, k, variant, log_mark)
    except AssertionError:
        # Let the script run to its end, so that the guest takes commands again.
        touch(g, f"inflated.{n}")
        touch(g, f"go.{n}")
        if g.done_rc(k) is None:
            s.finish(g, k, timeout=300)
        raise


def check_cycle(g, n, k, variant, log_mark):
    s.wait_file(g, os.path.join(g.dir, f"up.{n}"), k)
    b.set_target(g, RAM - INFLATE)
    s.wait_actual(g, RAM - INFLATE, timeout=60)
    touch(g, f"inflated.{n}")
    s.wait_file(g, os.path.join(g.dir, f"measured.{n}"), k)
    with open(os.path.join(g.dir, f"info.{n}")) as f:
        info = dict(l.replace(":", " ").split()[:2] for l in f if l.strip())
    if variant != 2:
        b.set_target(g, RAM)
        s.wait_actual(g, RAM, timeout=60)
    touch(g, f"go.{n}")
    rc, out = s.finish(g, k, timeout=120)
    assert rc == 0, out
    if variant == 2:
        # The device's target is still the old one; the driver's `actual` went to 0.
        assert b.actual(g) == RAM
        b.set_target(g, RAM)
    assert b.actual(g) == RAM
    assert int(info["pages_held"]) == INFLATE // 4096, info
    assert base["MemTotal"] - int(info["MemTotal"]) == INFLATE // 1024, info
    lines = out.splitlines()
    assert lines[0].split()[1] == str(base["MemTotal"]), out
    assert not [l for l in lines[1:] if "_rs" in l], f"modules left:\n{out}"
    # The kernel log streams to the host (tests/lib/vm.py): what the cycle logged.
    new = g.kernel_log().splitlines()[log_mark:]
    problems = g.kernel_problems(new)
    assert not problems, "kernel problems:\n" + s.excerpt(new)
    with open(os.path.join(g.dir, f"times.{n}")) as f:
        marks = [l.split() for l in f if l.strip()]
    for (_, t0), (step, t1) in zip(marks, marks[1:]):
        steps.setdefault(step, []).append(float(t1) - float(t0))
    for name in ("up", "inflated", "info", "measured", "go", "times"):
        os.remove(os.path.join(g.dir, f"{name}.{n}"))
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
            s.rmmod_all(g)
            b.set_target(g, RAM)
            mark = len(g.kernel_log().splitlines())
        except vm.GuestError as e:
            results[n] = f"the guest stopped answering: {e}"
            break
    done = sum(1 for r in results.values() if r is None)
    print(f"\n{done} of {CYCLES} cycles passed in {time.monotonic() - t0:.0f}s")
    if steps:
        print("mean seconds per cycle, by step (guest clock): " + ", ".join(
            f"{step} {sum(v) / len(v):.2f}" for step, v in steps.items()))
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
    assert not s.loaded_rs_modules(guest)
    mem = b.meminfo(guest)
    assert mem["MemTotal"] == base["MemTotal"]
    assert mem["MemAvailable"] > base["MemAvailable"] - 32 * 1024, (base, mem)


def test_kmemleak_after_cycles(guest):
    """No unreferenced object (since boot: this covers the KUnit and fault tests too)."""
    assert base, "test_baseline did not run"
    report = s.kmemleak_report(guest)
    assert report.strip() == "", "kmemleak found leaks:\n" + report
