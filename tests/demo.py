#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The demo: boot a 1 GiB guest with QEMU's legacy virtio-balloon, load the Rust stack, move
the balloon function from the C transport to the Rust one and back, and show each step."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import vm  # noqa: E402


def show(title, text=""):
    print(f"\n=== {title}")
    for line in text.rstrip().splitlines():
        print(f"    {line}")


def main():
    t0 = time.monotonic()
    print("Booting a 1 GiB guest under TCG with -device " + vm.LEGACY_BALLOON + " ...")
    with vm.Guest("demo", memory="1G") as g:
        show(f"guest up in {g.boot_seconds:.0f}s", g.sh("uname -r; grep MemTotal /proc/meminfo"))
        bdf = g.balloon_bdf()
        show("the legacy balloon function and its driver",
             g.sh(f"cat /sys/bus/pci/devices/{bdf}/uevent | grep -E 'DRIVER|PCI_ID|PCI_SUBSYS'"))
        show("modprobe virtio_balloon_rs loads the chain (virtio_ring_rs first)",
             g.sh("modprobe -v virtio_balloon_rs; grep _rs /proc/modules"))
        g.sh("modprobe virtio_pci_rs")
        g.bind(bdf, "virtio_pci_rs")
        time.sleep(1)
        show("bound to the Rust transport; it published an auxiliary device",
             g.sh(f"readlink /sys/bus/pci/devices/{bdf}/driver; ls /sys/bus/auxiliary/devices/; "
                  "ls /sys/bus/auxiliary/drivers/virtio_balloon_rs/ | grep virtio"))
        show("kernel log", "\n".join(l for l in g.new_kernel_log() if "_rs" in l or "virtio" in l))
        show("QMP query-balloon (the device, seen from the host)", str(g.qmp_cmd("query-balloon")))
        g.unbind(bdf)
        g.bind(bdf, "virtio-pci")
        show("unbound, and handed back to the C driver",
             g.sh(f"readlink /sys/bus/pci/devices/{bdf}/driver; "
                  "rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs; echo modules removed"))
        problems = g.kernel_problems()
        show("kernel warnings during the demo", "\n".join(problems) or "none")
    print(f"\nDemo finished in {time.monotonic() - t0:.0f}s.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
