# SPDX-License-Identifier: GPL-2.0
"""The ring under a hostile device, with QEMU's real balloon: the test-only fault switch of
virtio_ring_rs (/sys/kernel/debug/virtio_ring_rs/fault, fault flavour only) makes the driver
read a corrupted used ring on the next completion of one queue: an out-of-range id on the
inflate queue, an absurd length on the deflate queue, a used-index jump on the stats queue.

An absurd length is not a protocol violation (devices report the out-length too; Linux
reverted making it one): the ring clamps it to the buffer's writable length, logs it once and
counts it, and the queue goes on.  For the other two: the ring detects it and logs it exactly
once (however often the driver calls the
broken queue afterwards), hands out no buffer (the balloon gets nothing back, so it never
touches a token the device named), the balloon's accounting stays consistent with QEMU's,
the guest keeps running, `rmmod` works and no page is lost (`MemTotal` back, `MemFree`
back).

What the balloon does then (README, "A misbehaving device"): a broken inflate queue stops
inflation, and the pages of its messages in flight are set aside until unbind (the device may
hold them); the deflate queue keeps working.  A broken deflate queue (QEMU does not offer
MUST_TELL_HOST) gives pages back to the guest without telling the device; inflation keeps
working.  Each is logged once by the balloon.
"""

import re
import time

import balloon as b
import vm

RAM = b.RAM

VIOLATION = "device violated the ring protocol"


def fault_state(g):
    return dict(l.split() for l in g.sh(f"cat {b.RING_FAULT}").splitlines())



def setup_balloon(g, inflate_mib):
    """Bind the Rust stack and inflate; returns the meminfo before inflating."""
    b.bind_rust(g)
    before = b.meminfo(g)
    target = RAM - inflate_mib * b.MiB
    b.set_target(g, target)
    b.wait_actual(g, target, timeout=b.SLOW_WAIT)
    return before


def consistent(g):
    """The driver's books agree with themselves and with QEMU's `actual`."""
    st = b.status(g)
    moved = st["inflated_pages"] - st["deflated_pages"] - st["oom_deflated_pages"] \
        - st["shrinker_deflated_pages"]
    assert moved == st["actual_pages"] == st["pages_held"], st
    assert b.actual(g) == RAM - st["actual_pages"] * 4096, (st, b.actual(g))
    return st


def teardown(g, before):
    """Unbind and unload everything; the guest gets all its memory back."""
    b.rmmod_all(g)
    for line in g.kernel_log().splitlines()[g.log_mark:]:
        if "_rs" in line:
            print(f"  {line.strip()}")
    g.alive()
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    # Free memory counts the per-CPU lists, where the freed pages land (balloon.meminfo()).
    b.assert_free_memory_back(before, after, 16 * 1024)
    assert b.actual(g) == RAM
    # The device's target goes back too, for the next test's bind.
    b.set_target(g, RAM)


def expect_one_violation(lines, queue, what):
    hits = [l for l in lines if VIOLATION in l]
    assert len(hits) == 1, "expected one violation report, got:\n" + "\n".join(hits)
    assert f"queue {queue}:" in hits[0] and what in hits[0], hits[0]
    fired = [l for l in lines if re.search(rf"fault: queue {queue}: ", l)]
    assert len(fired) == 1, lines
    print(f"\n  {fired[0].strip()}\n  {hits[0].strip()}")


def test_fault_switch_is_there(guest):
    g = guest
    b.rmmod_all(g)
    g.sh("modprobe virtio_ring_rs")
    st = fault_state(g)
    assert st == {"armed": "off", "injected": "0"}, st
    # Bad commands are refused and change nothing.
    for bad in ("bogus", "id 70000", "id 1 2"):
        rc, _ = g.run(f"echo '{bad}' > {b.RING_FAULT}", check=False)
        assert rc != 0, bad
    assert fault_state(g)["armed"] == "off"
    g.take_log()


def test_bad_id_on_inflate_queue(guest):
    g = guest
    before = setup_balloon(g, 32)
    g.take_log()
    g.sh(f"echo 'id 0' > {b.RING_FAULT}")
    assert fault_state(g)["armed"] == "id"
    b.set_target(g, RAM - 64 * b.MiB)
    # The balloon reads the corrupted completion of its first inflate message.
    deadline = time.monotonic() + 120
    while fault_state(g)["injected"] != "1":
        assert time.monotonic() < deadline, "the fault never fired"
        time.sleep(0.2)
    time.sleep(2)
    # Make the driver use the broken queue again: still one report.
    b.set_target(g, RAM - 80 * b.MiB)
    time.sleep(3)
    lines = g.take_log()
    expect_one_violation(lines, 0, "UsedIdOutOfRange { id: 3735928559 }")
    assert fault_state(g) == {"armed": "off", "injected": "1"}
    st = consistent(g)
    assert st["device_errors"] >= 1, st
    # The balloon stopped inflating at the broken message: 32 MiB, not 64; the pages of
    # the lost message(s) are set aside.
    assert st["actual_pages"] == 32 * 256, st
    assert st["set_aside_pages"] > 0, st
    assert vm.count(lines, "inflate queue broken") == 1, lines
    # The deflate queue still works: the balloon should follow the device down to nothing.
    # (Checked after the teardown, so that a balloon stuck here still gets its unload and
    # leak checks.)
    b.set_target(g, RAM)
    try:
        b.wait_actual(g, RAM, timeout=60)
        stuck = None
    except AssertionError as e:
        stuck = f"{e}; driver status: {b.status(g)}"
    consistent(g)
    g.take_log()
    teardown(g, before)
    g.take_log()
    assert stuck is None, ("with its inflate queue broken, the balloon no longer deflates "
                           "when the device asks: " + stuck)


def test_bad_len_on_deflate_queue(guest):
    g = guest
    before = setup_balloon(g, 32)
    g.take_log()
    g.sh(f"echo 'len 1' > {b.RING_FAULT}")
    b.set_target(g, RAM)
    # The first deflate message's completion claims 0xffffffff bytes written into a
    # device-readable buffer: clamped to 0, the message completes as usual.
    b.wait_actual(g, RAM, timeout=b.SLOW_WAIT)
    lines = g.take_log()
    assert vm.count(lines, VIOLATION) == 0, lines
    clamped = [l for l in lines if "clamped" in l]
    assert len(clamped) == 1 and "queue 1:" in clamped[0], lines
    assert "len 4294967295 exceeds writable length 0" in clamped[0], clamped
    st = consistent(g)
    assert st["pages_held"] == 0 and st["device_errors"] == 0, st
    assert vm.count(lines, "queue broken") == 0, lines
    # Inflating and deflating still work, with no new report.
    b.set_target(g, RAM - 8 * b.MiB)
    b.wait_actual(g, RAM - 8 * b.MiB, timeout=b.SLOW_WAIT)
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=b.SLOW_WAIT)
    lines = g.take_log()
    assert vm.count(lines, VIOLATION) == 0, lines
    assert vm.count(lines, "queue broken") == 0, lines
    consistent(g)
    teardown(g, before)
    g.take_log()


def test_used_idx_jump_on_stats_queue(guest):
    g = guest
    before = setup_balloon(g, 16)
    # QEMU returns the statistics buffer every second: a completion on queue 2.
    g.qmp_cmd("qom-set", path="/machine/peripheral/balloon0",
              property="guest-stats-polling-interval", value=1)
    deadline = time.monotonic() + 60
    while b.status(g)["stats_sent"] < 3:
        assert time.monotonic() < deadline, "the device does not poll statistics"
        time.sleep(0.5)
    g.take_log()
    g.sh(f"echo 'jump 2' > {b.RING_FAULT}")
    deadline = time.monotonic() + 60
    while fault_state(g)["armed"] != "off":
        assert time.monotonic() < deadline, "the fault never fired"
        time.sleep(0.5)
    sent = b.status(g)["stats_sent"]
    time.sleep(4)
    lines = g.take_log()
    expect_one_violation(lines, 2, "UsedIdxJump")
    # The broken stats queue is left alone, the balloon still follows the device.
    assert b.status(g)["stats_sent"] == sent
    b.set_target(g, RAM - 48 * b.MiB)
    b.wait_actual(g, RAM - 48 * b.MiB, timeout=b.SLOW_WAIT)
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=b.SLOW_WAIT)
    consistent(g)
    g.qmp_cmd("qom-set", path="/machine/peripheral/balloon0",
              property="guest-stats-polling-interval", value=0)
    teardown(g, before)
    g.take_log()


def test_modules_unload_after_faults(guest):
    g = guest
    b.rmmod_all(g)
    assert not g.sh("ls /sys/kernel/debug/ | grep virtio_ || true").strip()
    g.alive()
