#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The demo: boot a 1 GiB guest with QEMU's legacy virtio-balloon, bind the Rust stack, drive
the balloon down and up over QMP, and show its size over time (a text timeline and a PNG),
ending with all the memory back in the guest."""

import os
import sys
import time

import toollib  # noqa: F401 (puts tests/lib on the module path)
import balloon as b
import vm

RAM = 1024 * b.MiB
STEPS = [512 * b.MiB, 768 * b.MiB, 384 * b.MiB, RAM]


def show(title, text=""):
    print(f"\n=== {title}")
    for line in text.rstrip().splitlines():
        print(f"    {line}")


def bar(mib, width=50):
    n = int(round(width * mib / 1024))
    return "#" * n + "." * (width - n)


def plot(samples, marks, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [s for s, _ in samples]
    size = [(RAM - a) / b.MiB for _, a in samples]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, size, drawstyle="steps-post", label="balloon size (MiB)")
    for when, target in marks:
        ax.axvline(when, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(f"target {target // b.MiB} MiB", (when, (RAM - target) / b.MiB),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("seconds since the first QMP balloon command")
    ax.set_ylabel("balloon size (MiB)")
    ax.set_title("virtio_balloon_rs following QEMU's target (1 GiB guest, TCG)")
    ax.set_ylim(0, RAM / b.MiB)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    outdir = os.path.join(os.environ.get("VIRTIO_RS_CACHE", "/var/tmp"), "demo")
    os.makedirs(outdir, exist_ok=True)
    t0 = time.monotonic()
    print("Booting a 1 GiB guest under TCG with -device " + vm.LEGACY_BALLOON + " ...")
    with vm.Guest("demo", memory="1G") as g:
        show(f"guest up in {g.boot_seconds:.0f}s", g.sh("uname -r; grep MemTotal /proc/meminfo"))
        bdf = g.balloon_bdf()
        show("the legacy balloon function, bound to the C driver at boot",
             g.sh(f"grep -E 'DRIVER|PCI_ID' /sys/bus/pci/devices/{bdf}/uevent"))
        b.bind_rust(g)
        show("moved to the Rust transport; virtio_balloon_rs autoloaded for its auxiliary device",
             g.sh(f"readlink /sys/bus/pci/devices/{bdf}/driver | xargs basename; "
                  "ls /sys/bus/auxiliary/devices/; grep _rs /proc/modules | cut -d' ' -f1-4"))
        show("kernel log", "\n".join(l for l in g.new_kernel_log() if "_rs" in l))

        samples, marks = [], []
        start = time.monotonic()
        print("\n=== driving the balloon over QMP (balloon = memory taken from the guest)")
        for target in STEPS:
            before = b.meminfo(g)
            b.set_target(g, target)
            when = time.monotonic() - start
            marks.append((when, target))
            took = b.wait_actual(g, target, samples=samples, origin=start)
            after = b.meminfo(g)
            size = (RAM - target) // b.MiB
            print(f"    t={when:6.1f}s  target {target // b.MiB:5d} MiB  balloon {size:4d} MiB "
                  f"|{bar(size)}|  reached in {took:5.1f}s  "
                  f"MemTotal {before['MemTotal'] // 1024} -> {after['MemTotal'] // 1024} MiB")
        show("timeline (seconds, balloon MiB)", "\n".join(
            f"{s:6.2f} {(RAM - a) // b.MiB:5d} |{bar((RAM - a) // b.MiB)}|"
            for s, a in samples[::max(1, len(samples) // 25)]))
        png = os.path.join(outdir, "balloon.png")
        if plot(samples, marks, png):
            show("plot", png)
        show("QMP query-balloon at the end", str(g.qmp_cmd("query-balloon")))
        g.unbind(bdf)
        g.bind(bdf, "virtio-pci")
        show("unbound and handed back to the C driver; modules removed",
             g.sh(f"readlink /sys/bus/pci/devices/{bdf}/driver | xargs basename; "
                  "rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs; "
                  "grep MemTotal /proc/meminfo"))
        problems = g.kernel_problems()
        show("kernel warnings during the demo", "\n".join(problems) or "none")
    print(f"\nDemo finished in {time.monotonic() - t0:.0f}s.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
