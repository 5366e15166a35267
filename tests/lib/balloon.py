# SPDX-License-Identifier: GPL-2.0
"""Helpers the balloon tests and the demo share: bind the Rust stack, move the target over
QMP, wait for `actual`, read the guest's memory counters."""

import time

MiB = 1024 * 1024


def meminfo(g):
    """The guest's /proc/meminfo as a dict of kB values."""
    out = g.sh("cat /proc/meminfo")
    info = {}
    for line in out.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            info[key] = int(fields[0])
    return info


def bind_rust(g, driver="virtio_pci_rs"):
    """Load the Rust transport, move the balloon function to it, wait for the balloon."""
    bdf = g.balloon_bdf()
    g.sh("modprobe virtio_pci_rs")
    g.bind(bdf, driver)
    g.sh("for i in $(seq 150); do "
         "[ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ] && exit 0; "
         "sleep 0.2; done; exit 1", timeout=60)
    return bdf


def bind_c(g):
    """Move the balloon function to the C virtio-pci driver (virtio_balloon autoloads)."""
    bdf = g.balloon_bdf()
    g.bind(bdf, "virtio-pci")
    g.sh("for i in $(seq 150); do "
         "ls /sys/bus/virtio/drivers/virtio_balloon/ 2>/dev/null | grep -q virtio && exit 0; "
         "modprobe virtio_balloon; sleep 0.2; done; exit 1", timeout=60)
    return bdf


def set_target(g, size_bytes):
    g.qmp_cmd("balloon", value=size_bytes)


def actual(g):
    return g.qmp_cmd("query-balloon")["actual"]


def wait_actual(g, size_bytes, timeout=120, samples=None, origin=None):
    """Wait until query-balloon reports `size_bytes`; return the seconds it took.

    With `samples` (a list), append (seconds since `origin`, actual) pairs along the way."""
    t0 = time.monotonic()
    while True:
        a = actual(g)
        now = time.monotonic() - t0
        if samples is not None:
            samples.append((time.monotonic() - (origin if origin is not None else t0), a))
        if a == size_bytes:
            return now
        if now > timeout:
            raise AssertionError(f"actual stuck at {a} (wanted {size_bytes}) after {timeout}s")
        time.sleep(0.1)


def oom_kills(g):
    """OOM kills since the guest booted (/proc/vmstat)."""
    for line in g.sh("cat /proc/vmstat").splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def squeeze(g, ram, leave_mib=64, timeout=180):
    """Inflate until only about `leave_mib` MiB are available in a guest of `ram` bytes;
    returns the target."""
    avail_mib = meminfo(g)["MemAvailable"] // 1024
    target = ram - (avail_mib - leave_mib) * MiB
    set_target(g, target)
    wait_actual(g, target, timeout=timeout)
    return target
