# SPDX-License-Identifier: GPL-2.0
"""Hot-unplug: QMP `device_del` of the balloon while the Rust driver holds an inflated
balloon, and while it is inflating.  The guest has the balloon behind a PCIe root port,
which QEMU hot-plugs through ACPI (the debug kernel has HOTPLUG_PCI_ACPI; see conftest).
Each time the driver must release everything (`MemTotal` and `MemFree` back, no warning),
the guest must keep running, and a device plugged back in must work with the Rust driver
again.
"""

import os
import time

import balloon as b
import vm

RAM = b.RAM
plug = b.plug
unplug = b.unplug

AUX = "/sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*"
# The driver's bounded wait for the device (README, "A misbehaving device"): a removal that
# paid for even one would take longer than this.
ACK_TIMEOUT_S = 5


def released_everything(g, before, inflated):
    """After the unplug: the guest answers, and has its memory back."""
    g.alive()
    assert not g.sh("ls /sys/bus/auxiliary/devices/").split()
    assert g.run("ls /sys/kernel/debug/virtio_balloon_rs/balloon.*", check=False)[0] != 0
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    # Free memory counts the per-CPU lists, where the released pages land (balloon.meminfo()).
    free = [m["MemFree"] + m["PcpFree"] for m in (before, inflated, after)]
    assert free[2] > free[1] + 0.85 * (free[0] - free[1]), (before, inflated, after)
    lines = g.take_log()
    assert vm.count(lines, "balloon removed, all pages returned") == 1, lines
    return lines


def test_the_slot_is_hotpluggable(guest):
    g = guest
    out = g.sh("ls /sys/bus/pci/slots/ 2>/dev/null; true")
    assert out.split(), "no hotplug slot in the guest (is HOTPLUG_PCI_ACPI in the kernel?)"


def test_unplug_while_inflated(guest):
    g = guest
    b.bind_rust(g)
    before = b.meminfo(g)
    b.set_target(g, RAM - 128 * b.MiB)
    b.wait_actual(g, RAM - 128 * b.MiB, timeout=b.SLOW_WAIT)
    inflated = b.meminfo(g)
    assert before["MemTotal"] - inflated["MemTotal"] == 128 * 1024
    g.take_log()
    secs = unplug(g)
    print(f"unplugged in {secs:.1f}s")
    released_everything(g, before, inflated)
    b.rmmod_all(g)
    g.alive()


def test_unplug_while_inflating(guest):
    g = guest
    plug(g)
    # Small messages, one at a time (64 KiB each): the driver's own 16 MiB messages fill
    # 512 MiB before the host can read the guest's state twice.
    g.sh("modprobe virtio_balloon_rs msg_pages=16 msgs_in_flight=1")
    b.bind_rust(g)
    before = b.meminfo(g)
    target_pages = 512 * 256
    # The guest watches: as soon as the balloon is on its way (well before it gets there) it
    # saves the meminfo and the balloon's size (the driver's debugfs files go with the unplug)
    # and says so (a file in the shared directory); the host unplugs at once.  Then it says
    # when the balloon's auxiliary device is gone, which is after the driver's unbind
    # returned: unplug-to-unbound, as the host sees it.
    meminfo = os.path.join(g.dir, "unplug-watch.meminfo")
    inflating = os.path.join(g.dir, "unplug-watch.inflating")
    unbound = os.path.join(g.dir, "unplug-watch.unbound")
    n = g.submit(f"""
i=0
until [ "$(sed -n 's/^pages_held //p' {b.STATUS})" -ge {16 * 256} ] 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 2400 ] && {{ echo "the balloon does not inflate"; exit 1; }}
    sleep 0.05
done
{{ {b.MEMINFO_SH}; }} > {meminfo}
sed -n 's/^pages_held //p' {b.STATUS} > {inflating}.tmp && mv {inflating}.tmp {inflating}
while ls -d {AUX} >/dev/null 2>&1; do sleep 0.02; done
touch {unbound}""")
    b.set_target(g, RAM - 512 * b.MiB)
    g.wait_file(inflating, n, timeout=150)
    t0 = time.monotonic()
    g.qmp_cmd("device_del", id="balloon0")
    g.wait_file(unbound, n, timeout=120)
    to_unbound = time.monotonic() - t0
    rc, out = g.wait_done(n)
    assert rc == 0, out
    with open(inflating) as f:
        held = int(f.read())
    with open(meminfo) as f:
        inflated = {l.split(":")[0]: int(l.split()[1]) for l in f if len(l.split()) > 1}
    secs = b.wait_device_gone(g)
    print(f"unplugged at {held} of {target_pages} pages: unbound {to_unbound:.2f}s after "
          f"device_del, gone after {to_unbound + secs:.1f}s")
    assert held < target_pages, "the balloon was already inflated: not a mid-inflation unplug"
    lines = released_everything(g, before, inflated)
    assert vm.count(lines, "not told about") == 0, lines
    # No wait for the device timed out on the way (each would cost 5 s), and the whole
    # removal, deflating every page it held in 64 KiB messages, stays well within one.
    assert vm.count(lines, "handed nothing back") == 0, lines
    assert to_unbound < ACK_TIMEOUT_S / 2, f"unbound {to_unbound:.2f}s after device_del"
    b.rmmod_all(g)


def test_replugged_device_works(guest):
    g = guest
    plug(g)
    b.bind_rust(g)
    before = b.meminfo(g)
    b.set_target(g, RAM - 64 * b.MiB)
    b.wait_actual(g, RAM - 64 * b.MiB, timeout=b.SLOW_WAIT)
    b.set_target(g, RAM)
    b.wait_actual(g, RAM, timeout=b.SLOW_WAIT)
    b.rmmod_all(g)
    assert b.meminfo(g)["MemTotal"] == before["MemTotal"]
    g.take_log()
