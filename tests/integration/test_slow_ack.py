# SPDX-License-Identifier: GPL-2.0
"""A slow completion path under memory pressure (issue 13.4), and statistics that survive a
failed read (13.6), against the Rust stack in the test flavour; and an OOM notifier that
waits for a balloon busy for a moment rather than giving nothing back.

The balloon learns that the device used a buffer through a work item (the interrupt callback
cannot take its lock).  Under memory pressure that work may start late: no kworker can be
created.  The test flavour's switch `/sys/kernel/debug/virtio_balloon_rs_testing/ack_delay_ms`
makes that work sleep before it wakes the balloon, longer than the driver's 5 s
acknowledgement timeout, while the device itself answers at once.  A driver that trusts only
the wake-up times out and freezes the balloon for good; this one looks at the used rings
itself, so the balloon keeps following its target: through an inflation, a memory storm
that the shrinker and the OOM notifier answer by deflating, and a new target afterwards.

`fail_stats` makes the next reads of the memory statistics fail (as an allocation failure
there would): the driver sends the previous values back to the device instead of keeping the
buffer, so the device keeps asking and the statistics keep coming.
"""

import time

import balloon as b

RAM = 1024 * b.MiB
BALLOON = {"deflate-on-oom": True}
FLAVOUR = "kunit"
SWITCH = "/sys/kernel/debug/virtio_balloon_rs_testing"
PATH = "/machine/peripheral/balloon0"
# Longer than the driver's acknowledgement timeout (5 s).
ACK_DELAY_MS = 7000


def hog(g, mib):
    # Touch every page: a filled bytes object, not a lazily zeroed one.
    return g.run(f"python3 -c \"x = b'\\x01' * ({mib} << 20); print(len(x))\"",
                 timeout=600, check=False)


def driver_log(g):
    return [l for l in g.new_kernel_log() if "virtio_balloon_rs" in l]


def test_slow_completions_under_a_memory_storm(guest):
    g = guest
    # The shrinker and the OOM notifier both answer pressure.
    g.sh("modprobe virtio_balloon_rs deflate_policy=3")
    b.bind_rust(g)
    assert int(g.sh(f"cat {SWITCH}/ack_delay_ms")) == 0
    g.sh(f"echo {ACK_DELAY_MS} > {SWITCH}/ack_delay_ms")
    try:
        b.set_target(g, RAM - 256 * b.MiB)
        took = b.wait_actual(g, RAM - 256 * b.MiB, timeout=300)
        print(f"inflated 256 MiB in {took:.1f}s with completions delayed {ACK_DELAY_MS} ms")
        # The storm: squeeze the guest, then a hog larger than what is available, which only
        # the balloon can make room for (the guest has no swap).
        target = b.squeeze(g, RAM, timeout=300)
        kills = b.oom_kills(g)
        avail_mib = b.meminfo(g)["MemAvailable"] // 1024
        rc, out = hog(g, avail_mib + 128)
        assert rc == 0, out
        assert b.oom_kills(g) == kills
        st = b.status(g)
        print(f"hog of {avail_mib + 128} MiB with {avail_mib} MiB available: shrinker gave "
              f"{st['shrinker_deflated_pages']} pages, OOM notifier {st['oom_deflated_pages']}")
        assert st["shrinker_deflated_pages"] + st["oom_deflated_pages"] > 0, st
        assert b.actual(g) > target
        # Still following: a new target after the storm, then none.
        b.set_target(g, RAM - 128 * b.MiB)
        b.wait_actual(g, RAM - 128 * b.MiB, timeout=300)
        b.set_target(g, RAM)
        b.wait_actual(g, RAM, timeout=300)
        st = b.status(g)
        # The device never went silent: only the news of its answers came late.
        assert st["ack_timeouts"] == 0 and st["device_errors"] == 0, st
        assert st["pages_held"] == st["actual_pages"] == 0, st
        log = driver_log(g)
        assert not [l for l in log if "frozen" in l or "handed nothing back" in l], log
    finally:
        g.sh(f"echo 0 > {SWITCH}/ack_delay_ms")
    g.unbind(g.balloon_bdf())
    b.rmmod_all(g)


def test_oom_notifier_waits_for_a_busy_balloon(guest):
    """The completion work takes the balloon's lock for a moment after every interrupt; when
    the host preempts the guest CPU inside, an OOM notifier call that finds the lock taken
    must wait for it, not give nothing back: the kernel kills a process after a single call
    that freed nothing.  `ack_hold_ms` holds the lock 300 ms in that work, after a delay
    longer than the balloon's own look at its queues (100 ms), so the next call of the OOM
    notifier comes while it is held."""
    g = guest
    g.sh("modprobe virtio_balloon_rs deflate_policy=1")
    b.bind_rust(g)
    g.sh(f"echo 150 > {SWITCH}/ack_delay_ms; echo 300 > {SWITCH}/ack_hold_ms")
    try:
        target = b.squeeze(g, RAM, timeout=300)
        kills = b.oom_kills(g)
        rc, out = hog(g, 128)
        st = b.status(g)
        assert rc == 0, f"hog: {out}\n{st}"
        assert b.oom_kills(g) == kills, st
        assert st["oom_deflated_pages"] > 0, st
        assert st["pressure_busy"] == 0, st
        assert b.actual(g) > target
    finally:
        g.sh(f"echo 0 > {SWITCH}/ack_delay_ms; echo 0 > {SWITCH}/ack_hold_ms")
        b.set_target(g, RAM)
        b.wait_actual(g, RAM, timeout=300)
    g.unbind(g.balloon_bdf())
    b.rmmod_all(g)


def test_statistics_survive_a_failed_read(guest):
    g = guest
    b.bind_rust(g)
    fails = 3
    g.sh(f"echo {fails} > {SWITCH}/fail_stats")
    g.qmp_cmd("qom-set", path=PATH, property="guest-stats-polling-interval", value=1)
    try:
        # The device asks every second; each answer after the failed reads carries fresh
        # values again.
        deadline = time.monotonic() + 120
        st = b.status(g)
        while time.monotonic() < deadline:
            st = b.status(g)
            if st["stats_failures"] == fails and st["stats_sent"] >= fails + 3:
                break
            time.sleep(1)
        assert st["stats_failures"] == fails, st
        assert st["stats_sent"] >= fails + 3, st
        assert int(g.sh(f"cat {SWITCH}/fail_stats")) == 0
        sent = st["stats_sent"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b.status(g)["stats_sent"] <= sent:
            time.sleep(1)
        assert b.status(g)["stats_sent"] > sent, "the statistics stopped"
        # What the host sees is the guest's memory, not the zeros of a failed read.
        stats = g.qmp_cmd("qom-get", path=PATH, property="guest-stats")["stats"]
        assert stats["stat-total-memory"] > 0, stats
        log = driver_log(g)
        assert sum("cannot read memory statistics" in l for l in log) == 1, log
    finally:
        g.qmp_cmd("qom-set", path=PATH, property="guest-stats-polling-interval", value=0)
    g.unbind(g.balloon_bdf())
    b.rmmod_all(g)
