# SPDX-License-Identifier: GPL-2.0
"""Hostile targets and a silent device (issue 5), against the Rust stack, about behaviour
only (what QMP, /proc and debugfs show), in one 1 GiB guest:

- rapid target changes: 20 QMP `balloon` commands in quick succession to random sizes; the
  balloon converges to the last one;
- a device that stops taking buffers: the transport's test switch
  `/sys/kernel/debug/virtio_pci_rs/drop_kicks` drops every queue notification; an inflate
  then hits the driver's bounded wait, an error is logged, the balloon stays empty and
  consistent, `rmmod` completes in bounded time and MemTotal is whole again; the driver
  works again once the device does;
- a target above guest memory (keep 64 MiB of 1 GiB): the driver inflates what it can, with
  no OOM kill (a process started before still runs), the guest stays responsive, the driver
  retries politely (its allocation-failure count grows slowly, no log storm), and the
  balloon empties when the target goes back up.  Last, because a driver that gets this
  wrong gets processes killed.

The drop_kicks switch exists only in the test flavour of the modules (`--cfg
virtio_rs_kunit`), so the guest loads the modules from `$VIRTIO_RS_KUNIT_DIR`, the output
directory of `scripts/build-flavour kunit` (`make check` passes it).  Without it the silent-device
test fails: it cannot run."""

import os
import random
import re
import time

import balloon as b
import vm

RAM = b.RAM
KUNIT_DIR = os.environ.get("VIRTIO_RS_KUNIT_DIR")
# A guest of its own, with the test flavour (the transport's drop_kicks switch) installed at
# boot: in the shared guest, after the other files, the silent-device test saw the driver log
# its timeout without counting a device error (session 4, not yet understood), and the
# frozen balloon then failed the tests after it.
GUEST_OPTIONS = {"moddir": KUNIT_DIR} if KUNIT_DIR else {}
SWITCH = "/sys/kernel/debug/virtio_pci_rs"
OOM = re.compile(r"Out of memory|oom-kill|invoked oom-killer|Killed process")
DRIVER = "virtio_balloon_rs"

# The guest's ordinary command latency under TCG is a fraction of a second to a few
# seconds on these loaded 2-core machines; a guest thrashing for memory takes far longer.
RESPONSIVE_S = 20
# The driver's documented bounded wait for the device is 5 s; rmmod may wait for one.
ACK_TIMEOUT_S = 5


def latency(g):
    """Seconds a trivial guest command takes, end to end."""
    t = time.monotonic()
    g.run("true", timeout=300)
    return time.monotonic() - t


def test_setup(guest):
    b.bind_rust(guest)
    st = b.status(guest)
    assert st["actual_pages"] == 0 and st["pages_held"] == 0, st


def test_rapid_target_changes_converge(guest):
    rng = random.Random(20261123)
    sizes = [rng.randrange(384, 1025) * b.MiB for _ in range(20)]
    for size in sizes:
        b.set_target(guest, size)
    b.wait_actual(guest, sizes[-1], timeout=300)
    want = (RAM - sizes[-1]) // 4096
    # Converged and stays there: the driver's view agrees with QMP's.
    time.sleep(2)
    st = b.status(guest)
    assert st["target_pages"] == st["actual_pages"] == want, st
    # Guest pages are 4 KiB here, the device's unit.
    assert st["pages_held"] == want, st
    assert b.actual(guest) == sizes[-1]
    b.set_target(guest, RAM)
    b.wait_actual(guest, RAM, timeout=300)
    assert b.status(guest)["pages_held"] == 0


def test_silent_device_bounded_wait_and_clean_rmmod(guest):
    rc, _ = guest.run(f"[ -w {SWITCH}/drop_kicks ]", check=False)
    assert rc == 0, (
        "no drop_kicks switch: the guest runs the production modules; set "
        "VIRTIO_RS_KUNIT_DIR to the output of scripts/build-flavour kunit (make check does)")
    assert b.actual(guest) == RAM
    before = b.meminfo(guest)
    st0 = b.status(guest)
    dropped0 = int(guest.sh(f"cat {SWITCH}/dropped_kicks"))
    guest.new_kernel_log()
    guest.sh(f"echo 1 > {SWITCH}/drop_kicks")
    try:
        b.set_target(guest, 768 * b.MiB)
        # The driver's bounded wait expires: it logs an error (kernel log level err or
        # worse), within its 5 s timeout plus the guest's slowness.
        deadline = time.monotonic() + 60
        errors = []
        while time.monotonic() < deadline and not errors:
            time.sleep(1)
            errors = [l for l in guest.sh("dmesg -l err,crit,alert,emerg").splitlines()
                      if DRIVER in l]
        assert errors, "no error logged by the driver while the device took nothing"
        assert int(guest.sh(f"cat {SWITCH}/dropped_kicks")) > dropped0
        # A clean state: nothing inflated as far as the host knows, the driver's counters
        # agree, no page left the guest.
        st = b.status(guest)
        assert b.actual(guest) == RAM
        assert st["actual_pages"] == 0 and st["pages_held"] == 0, st
        assert st["device_errors"] > st0["device_errors"], st
        assert b.meminfo(guest)["MemTotal"] == before["MemTotal"]
        # rmmod does not wait for the silent device forever.
        t = time.monotonic()
        rc, out = guest.run(f"rmmod {DRIVER}", timeout=120, check=False)
        took = time.monotonic() - t
        assert rc == 0, out
        assert took < ACK_TIMEOUT_S + RESPONSIVE_S, f"rmmod took {took:.1f}s"
    finally:
        guest.sh(f"echo 0 > {SWITCH}/drop_kicks")
    after = b.meminfo(guest)
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    # The batches the device never took were freed (1 MiB each; a leak of them all would
    # still hide in the noise, MemTotal is the exact check above).
    b.assert_free_memory_back(before, after, 32 * 1024)
    assert b.actual(guest) == RAM
    # The device works again, so does the driver.
    guest.sh(f"modprobe {DRIVER}")
    guest.sh("for i in $(seq 150); do "
             "[ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ] && exit 0; "
             "sleep 0.2; done; exit 1", timeout=60)
    b.set_target(guest, 896 * b.MiB)
    b.wait_actual(guest, 896 * b.MiB, timeout=180)
    b.set_target(guest, RAM)
    b.wait_actual(guest, RAM, timeout=180)
    assert b.status(guest)["device_errors"] == 0


# What the above-memory scenario saw; filled once by `above_memory`.
above = {}


def above_memory(g):
    """Runs the scenario once for the tests below, which check one property each."""
    if "error" in above:
        raise AssertionError(f"the above-memory scenario did not complete: {above['error']}")
    if "done" not in above:
        try:
            run_above_memory(g)
        except vm.GuestError as e:
            # Typically OOM kills of every killable process, then "Kernel panic - not
            # syncing: System is deadlocked on memory": show what the kernel said.
            above["error"] = "the guest died; its kernel log ends with:\n" + "\n".join(
                kmsg_tail(g))
            raise AssertionError(above["error"]) from e
        except Exception as e:
            above["error"] = repr(e)
            raise
        above["done"] = True
        print(f"above-memory scenario: { {k: v for k, v in above.items() if k != 'log'} }")
    return above


def kmsg_tail(g, n=25):
    """The last OOM and panic lines the guest's kernel logged to the shared directory."""
    try:
        with open(f"{g.dir}/kmsg.log", errors="replace") as f:
            lines = [l.split(";", 1)[-1].rstrip() for l in f]
    except OSError:
        return ["(no kernel log was saved)"]
    keep = re.compile(r"invoked oom-killer|Killed process|Out of memory|Kernel panic|"
                      r"^virtio_balloon|: balloon ")
    return [l for l in lines if keep.search(l)][-n:]


def run_above_memory(g):
    """Target 64 MiB on a 1 GiB guest; watch; stop at the first OOM kill; then back up."""
    # A process started before, killable (the harness's own shells are protected from the
    # OOM killer below, after the fork: they must survive to report), and more killable
    # processes, so that OOM kills, if any, have victims other than the harness and the
    # kernel does not panic for want of one.
    pid = g.sh("setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!").strip()
    ballast = g.sh("for i in $(seq 16); do "
                   "setsid sleep 100001 </dev/null >/dev/null 2>&1 & echo $!; done").split()
    g.sh("p=$PPID; while [ $p -gt 1 ]; do echo -1000 > /proc/$p/oom_score_adj; "
         "p=$(awk '{print $4}' /proc/$p/stat); done")
    # The kernel log, saved as it is written (protected too), in case the guest dies.
    g.sh(f"setsid sh -c 'cat /dev/kmsg > {g.dir}/kmsg.log' </dev/null >/dev/null 2>&1 &")
    # A safety valve, protected too: at the first OOM kill it unbinds the balloon (the
    # driver then returns every page), so that a driver that gets this wrong fails these
    # tests with a report instead of taking the whole guest down.  Shell builtins only, but
    # `sleep`.
    bdf = g.balloon_bdf()
    valve = f"{g.dir}/oom-valve"
    g.sh(f"""setsid sh -c '
        k0=; while read -r k v; do [ "$k" = oom_kill ] && k0=$v; done < /proc/vmstat
        while [ ! -e {valve}.stop ]; do
            while read -r k v; do
                if [ "$k" = oom_kill ] && [ "$v" != "$k0" ]; then
                    cat {b.STATUS} > {valve}.status
                    echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind
                    echo fired > {valve}; exit 0
                fi
            done < /proc/vmstat
            sleep 0.2
        done' </dev/null >/dev/null 2>&1 &""")
    before = b.meminfo(g)
    oom0 = b.vmstat(g, "oom_kill")
    fail0 = b.status(g)["alloc_failures"]
    g.new_kernel_log()
    samples, log, window = [], [], None
    above.update(before=before, samples=samples, log=log)
    b.set_target(g, 64 * b.MiB)
    t0 = time.monotonic()
    held_prev, stable = -1, 0
    while time.monotonic() - t0 < 240:
        lat = latency(g)
        if os.path.exists(valve):
            break
        try:
            st = b.status(g)
        except vm.GuestError:
            if os.path.exists(valve):
                break
            raise
        kills = b.vmstat(g, "oom_kill") - oom0
        samples.append((round(time.monotonic() - t0, 1), st["pages_held"],
                        st["alloc_failures"] - fail0, round(lat, 2)))
        new = g.new_kernel_log()
        log += new
        if window is not None:
            window["lines"] += new
        if kills:
            break
        # Stable: moved by at most 1 MiB since the last sample.
        stable = stable + 1 if abs(st["pages_held"] - held_prev) <= 256 else 0
        held_prev = st["pages_held"]
        # Settled: the balloon stopped growing and the driver has met allocation failures.
        if window is None and stable >= 3 and st["alloc_failures"] > fail0:
            window = {"t": time.monotonic(), "failures": st["alloc_failures"], "lines": []}
        if window is not None and time.monotonic() - window["t"] >= 30:
            break
        time.sleep(1)
    open(f"{valve}.stop", "w").close()
    above["valve_fired"] = os.path.exists(valve)
    if window is not None and not above["valve_fired"]:
        above["window_s"] = time.monotonic() - window["t"]
        above["window_failures"] = b.status(g)["alloc_failures"] - window["failures"]
        above["window_driver_lines"] = [l for l in window["lines"] if DRIVER in l]
    log += g.new_kernel_log()
    if above["valve_fired"]:
        with open(f"{valve}.status") as f:
            at_oom = {k: int(v) for k, v in (l.split() for l in f.read().splitlines())}
        above["status_at_first_oom_kill"] = at_oom
        samples.append((round(time.monotonic() - t0, 1), at_oom["pages_held"],
                        at_oom["alloc_failures"] - fail0, 0))
    above["held_max"] = max((s[1] for s in samples), default=0)
    above["max_latency"] = max((s[3] for s in samples), default=0)
    above["oom_kills"] = b.vmstat(g, "oom_kill") - oom0
    above["oom_lines"] = [l for l in log if OOM.search(l)]
    # The per-test kernel check only sees what this scenario did not read.
    above["kernel_problems"] = g.kernel_problems(log)
    above["sentinel_alive"] = g.run(f"kill -0 {pid}", check=False)[0] == 0
    # Back up: the balloon empties (unless the valve took the device away).
    b.set_target(g, RAM)
    if not above["valve_fired"]:
        above["deflate_s"] = b.wait_actual(g, RAM, timeout=300)
        above["after"] = b.meminfo(g)
        above["after_status"] = b.status(g)
    g.run(f"kill {pid} {' '.join(ballast)}", check=False)


def test_above_memory_inflates_what_it_can(guest):
    a = above_memory(guest)
    assert not a["kernel_problems"], a["kernel_problems"]
    # At least half of the guest's memory went into the balloon (4 KiB pages).
    assert a["held_max"] * 4 > a["before"]["MemTotal"] // 2, a["samples"]


def test_above_memory_no_oom_kill(guest):
    a = above_memory(guest)
    assert a["oom_kills"] == 0 and not a["oom_lines"], (
        f"{a['oom_kills']} OOM kills; log: {a['oom_lines'][:5]}; samples "
        f"(s, pages held, alloc failures, latency): {a['samples']}")
    assert a["sentinel_alive"], "a process started before the inflate was killed"


def test_above_memory_guest_stays_responsive(guest):
    a = above_memory(guest)
    assert a["max_latency"] < RESPONSIVE_S, a["samples"]


def test_above_memory_retries_politely(guest):
    a = above_memory(guest)
    assert "window_s" in a, (
        f"the balloon never settled at what it could take without {a['oom_kills']} OOM "
        f"kills: samples (s, pages held, alloc failures, latency): {a['samples']}")
    # It keeps trying (the target is not reached), but slowly: the C driver retries every
    # 200 ms (5 per second); the Rust driver backs off up to 5 s.
    assert a["window_failures"] >= 1, a
    assert a["window_failures"] <= a["window_s"] / 2, a
    # No log storm while it waits.
    assert len(a["window_driver_lines"]) <= 3, a["window_driver_lines"]


def test_above_memory_balloon_empties_when_target_rises(guest):
    a = above_memory(guest)
    assert not a["valve_fired"], (
        "not checked: OOM kills made the test unbind the device")
    assert a["after_status"]["pages_held"] == 0, a["after_status"]
    assert a["after_status"]["actual_pages"] == 0, a["after_status"]
    assert a["after"]["MemTotal"] == a["before"]["MemTotal"], (a["before"], a["after"])
