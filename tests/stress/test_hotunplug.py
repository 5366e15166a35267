# SPDX-License-Identifier: GPL-2.0
"""Hot-unplug: QMP `device_del` of the balloon while the Rust driver holds an inflated
balloon, and while it is inflating.  The guest has the balloon behind a PCIe root port,
which QEMU hot-plugs through ACPI (the debug kernel has HOTPLUG_PCI_ACPI; see conftest).
Each time the driver must release everything (`MemTotal` and `MemFree` back, no warning),
the guest must keep running, and a device plugged back in must work with the Rust driver
again.
"""

import time

import balloon as b
import vm

RAM = b.RAM
plug = b.plug
unplug = b.unplug


def released_everything(g, before, inflated):
    """After the unplug: the guest answers, and has its memory back."""
    g.alive()
    assert not g.sh("ls /sys/bus/auxiliary/devices/").split()
    assert g.run("ls /sys/kernel/debug/virtio_balloon_rs/balloon.*", check=False)[0] != 0
    after = b.meminfo(g)
    assert after["MemTotal"] == before["MemTotal"], (before, after)
    assert after["MemFree"] > inflated["MemFree"] + 0.85 * (before["MemFree"] -
                                                            inflated["MemFree"]), \
        (before, inflated, after)
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
    b.set_target(g, RAM - 512 * b.MiB)
    # Unplug as soon as the balloon is on its way, well before it gets there.
    deadline = time.monotonic() + 120
    while b.status(g)["pages_held"] < 16 * 256:
        assert time.monotonic() < deadline, "the balloon does not inflate"
        time.sleep(0.1)
    inflated = b.meminfo(g)
    # Read before the unplug: ACPI ejects the function within a second, and the driver's
    # debugfs files go with it.
    held = b.status(g)["pages_held"]
    g.qmp_cmd("device_del", id="balloon0")
    assert held < target_pages, "the balloon was already inflated: not a mid-inflation unplug"
    secs = b.wait_device_gone(g)
    print(f"unplugged at {held} of {target_pages} pages, in {secs:.1f}s")
    lines = released_everything(g, before, inflated)
    assert vm.count(lines, "not told about") == 0, lines
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
