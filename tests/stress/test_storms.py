# SPDX-License-Identifier: GPL-2.0
"""Memory storms: repeated OOM-level pressure on a guest whose balloon is inflated, under each
deflate_policy, with QEMU's deflate-on-oom=on (the balloon is replugged with it first).

Per policy, rounds of: inflate until only about 64 MiB are available, then two memory hogs at
once, each bigger than that; the last round starts the hogs while the balloon is still
inflating (pressure deflation racing the inflation worker).  The hung-task detector is armed
at 10 s (conftest), so a deadlock between the OOM notifier or shrinker and the balloon
worker is reported, and fails the test, well within it.  Afterwards the balloon must still
follow the device (deflate to nothing), unbind and unload, and the guest must have its memory
back.  With policy 4 (none) nothing gives memory back, so the OOM killer may kill a hog: that
is allowed; a deadlock or a kernel warning is not.
"""

import pytest

import balloon as b

RAM = b.RAM
F_DEFLATE_ON_OOM = 1 << 2
ROUNDS = 1
HOG_MIB = 160

# (deflate_policy, name)
POLICIES = [(1, "oom"), (2, "shrinker"), (3, "both"), (4, "none")]


def squeeze_target(g, leave_mib=64):
    avail_mib = b.meminfo(g)["MemAvailable"] // 1024
    return RAM - max(avail_mib - leave_mib, 0) * b.MiB


def vmstat(g, key):
    for line in g.sh("cat /proc/vmstat").splitlines():
        k, v = line.split()
        if k == key:
            return int(v)
    return 0


def hogs(g, n=2, mib=HOG_MIB):
    """`n` processes, each touching `mib` MiB at once (dd's buffer is filled by read());
    returns how many finished.  A deadlock shows as a timeout here."""
    # The OOM killer should pick a hog, not the guest agent or this shell.
    hog = (f"sh -c 'echo 1000 > /proc/self/oom_score_adj; "
           f"exec dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>/dev/null'")
    script = ("echo -1000 > /proc/$PPID/oom_score_adj; echo -1000 > /proc/$$/oom_score_adj; "
              "pids=; "
              + "".join(f"{hog} & pids=\"$pids $!\"; " for _ in range(n))
              + "ok=0; for p in $pids; do wait $p && ok=$((ok+1)); done; echo $ok")
    out = g.sh(script, timeout=600)
    return int(out.split()[-1])


def test_plug_a_deflate_on_oom_balloon(guest):
    b.replug(guest, **{"deflate-on-oom": True})


@pytest.mark.parametrize("policy,name", POLICIES, ids=[p[1] for p in POLICIES])
def test_storm(guest, policy, name):
    g = guest
    before = b.meminfo(g)
    g.sh(f"modprobe virtio_balloon_rs deflate_policy={policy}")
    b.bind_rust(g)
    st = b.status(g)
    assert st["features"] & F_DEFLATE_ON_OOM, st
    kills0 = vmstat(g, "oom_kill")
    finished = 0
    for r in range(ROUNDS + 1):
        target = squeeze_target(g)
        b.set_target(g, target)
        if r < ROUNDS:
            b.wait_actual(g, target, timeout=400)
        # else: the hogs race the inflation.
        finished += hogs(g)
        g.alive()
    st = b.status(g)
    kills = vmstat(g, "oom_kill") - kills0
    print(f"policy {name}: {finished} of {2 * (ROUNDS + 1)} hogs finished, {kills} OOM kills, "
          f"oom_deflated {st['oom_deflated_pages']}, shrinker_deflated "
          f"{st['shrinker_deflated_pages']}, alloc_failures {st['alloc_failures']}")
    if name == "none":
        assert st["oom_deflated_pages"] == 0 and st["shrinker_deflated_pages"] == 0, st
    elif name == "oom":
        assert st["oom_deflated_pages"] > 0 and st["shrinker_deflated_pages"] == 0, st
    elif name == "shrinker":
        assert st["shrinker_deflated_pages"] > 0 and st["oom_deflated_pages"] == 0, st
    else:
        assert st["oom_deflated_pages"] + st["shrinker_deflated_pages"] > 0, st
    # The balloon still follows the device after the storm.
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=400)
    assert b.status(g)["pages_held"] == 0
    b.rmmod_all(g)
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    g.alive()
