# SPDX-License-Identifier: GPL-2.0
"""Guest half of test_probe_faults.py (runs in the guest, as root, with python3): fails the
n-th allocation of one module's probe, for n = 1, 2, ... until the probe runs through without
reaching an n-th allocation, and checks after every attempt that nothing was left behind.

    python3 probe_faults_guest.py ring KO          module init of virtio_ring_rs (KO: its .ko)
    python3 probe_faults_guest.py pci BDF          probe of virtio_pci_rs on the function BDF
                                                   (and of the balloon driver it binds)
    python3 probe_faults_guest.py balloon BDF AUX DRV  probe of virtio_balloon_rs (its driver
                                                   directory DRV) on device AUX
    python3 probe_faults_guest.py filter on|off    set (clear) the stack trace filter below

The n-th allocation fails through the task's `fail-nth` file (CONFIG_FAULT_INJECTION): the
kernel counts the fault-injection points this thread passes (slab allocations through
failslab, page allocations through fail_page_alloc, which the caller configured to ignore
neither sleeping allocations nor order 0) and fails the n-th.  Reading the file back tells
whether the n-th was reached (0) or not (what is left).  The file is opened once, so that
nothing but the bind itself runs between arming it and reading it back.

The filter (CONFIG_FAULT_INJECTION_STACKTRACE_FILTER): an allocation whose call chain passes
through register_irq_proc() is neither counted nor failed (failslab's and fail_page_alloc's
reject-start/reject-end hold that function's text, from /proc/kallsyms).  That function
creates /proc/irq/N and its files when a probe's request_irq() installs the first handler
of an interrupt, ignores a file it failed to create, and unregister_irq_proc() then warns
("remove_proc_entry: removing non-empty directory" / "name not found") when the interrupt
is freed: a kernel bug, not a path of this project's code.  Every other allocation the
binding thread makes, in the driver core, in the transport and balloon and in the rest of
request_irq(), is counted and failed as before.

Prints one JSON object: the attempts made, how many failed, whether a last attempt ran
through with no allocation failed, and every problem found (empty when all is well)."""

import ctypes
import json
import os
import sys
import time

MAX_N = 20000
TIME_LIMIT_S = 900


def read(path):
    with open(path) as f:
        return f.read()


def memtotal():
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise RuntimeError("no MemTotal")


class FailNth:
    """This thread's fail-nth file, opened once."""

    def __init__(self):
        self.fd = os.open("/proc/thread-self/fail-nth", os.O_RDWR)

    def arm(self, n):
        os.pwrite(self.fd, str(n).encode(), 0)

    def left(self):
        """What is left of the count (0: the n-th allocation was failed); disarms."""
        left = int(os.pread(self.fd, 32, 0).decode().strip() or "0")
        os.pwrite(self.fd, b"0", 0)
        return left


def attempt(nth, n, fd, payload):
    """Arms fail-nth at `n`, writes `payload` to `fd`; returns (errno or 0, left)."""
    nth.arm(n)
    try:
        os.write(fd, payload)
        rc = 0
    except OSError as e:
        rc = e.errno
    return rc, nth.left()


def device_regs(bdf, queues=5):
    """The legacy device's STATUS and every queue's QUEUE_PFN, read from its I/O BAR."""
    dev = f"/sys/bus/pci/devices/{bdf}"
    with open(f"{dev}/config", "rb") as f:
        cmd = int.from_bytes(f.read(6)[4:6], "little")
    enabled_here = False
    if not cmd & 1:
        # I/O decoding off (the function is not enabled): enable it to look.
        with open(f"{dev}/enable", "w") as f:
            f.write("1")
        enabled_here = True
    fd = os.open(f"{dev}/resource0", os.O_RDWR)
    try:
        status = os.pread(fd, 1, 0x12)[0]
        pfns = []
        for q in range(queues):
            os.pwrite(fd, q.to_bytes(2, "little"), 0x0e)
            pfns.append(int.from_bytes(os.pread(fd, 4, 0x08), "little"))
    finally:
        os.close(fd)
        if enabled_here:
            with open(f"{dev}/enable", "w") as f:
                f.write("0")
    return status, pfns


def device_idle(bdf, problems, n, when):
    """No queue is live on the device and it is not DRIVER_OK."""
    status, pfns = device_regs(bdf)
    if any(pfns) or status & 0x4:
        problems.append(f"n={n} {when}: device status {status:#x}, queue PFNs {pfns}")


def live(problems, n, when):
    """The balloon module (test flavour) holds no balloon state and no hook."""
    counts = dict(l.split() for l in read(
        "/sys/kernel/debug/virtio_balloon_rs_testing/live").splitlines())
    if counts != {"balloons": "0", "hooks": "0"}:
        problems.append(f"n={n} {when}: still alive: {counts}")


FILTERED = ("register_irq_proc",)
ATTRS = ("failslab", "fail_page_alloc")


def text_range(name):
    """[start, end) of the kernel function `name`: its address in /proc/kallsyms and the
    next higher address of any kernel text symbol."""
    starts = []
    start = None
    for line in read("/proc/kallsyms").splitlines():
        f = line.split()
        if len(f) != 3 or f[1] not in "tT":
            continue
        addr = int(f[0], 16)
        starts.append(addr)
        if f[2] == name:
            start = addr
    if not start:
        raise RuntimeError(f"{name} not in /proc/kallsyms (or addresses hidden)")
    end = min(a for a in starts if a > start)
    return start, end


def set_filter(on):
    """Sets (clears) the reject range of both fault attributes; prints what it set."""
    (name,) = FILTERED
    start, end = text_range(name) if on else (0, 0)
    for attr in ATTRS:
        d = f"/sys/kernel/debug/{attr}"
        for f in ("reject-start", "reject-end", "stacktrace-depth"):
            if not os.path.exists(f"{d}/{f}"):
                raise RuntimeError(f"no {d}/{f}: is FAULT_INJECTION_STACKTRACE_FILTER "
                                   "in the kernel?")
        with open(f"{d}/stacktrace-depth", "w") as f:
            f.write("32")
        # (Set while no fail-nth is armed: the order of the two writes does not matter.)
        with open(f"{d}/reject-start", "w") as f:
            f.write(hex(start))
        with open(f"{d}/reject-end", "w") as f:
            f.write(hex(end))
        got = (int(read(f"{d}/reject-start"), 0), int(read(f"{d}/reject-end"), 0))
        if got != (start, end):
            raise RuntimeError(f"{d}: reject range {got}, wanted {(start, end)}")
    return {"filter": name if on else None, "reject": [hex(start), hex(end)]}


def loaded(name):
    return any(l.split()[0] == name for l in read("/proc/modules").splitlines())


def run(mode, args):
    nth = FailNth()
    problems = []
    total0 = memtotal()
    failed = 0
    clean = False
    t0 = time.monotonic()
    n = 0
    libc = ctypes.CDLL(None, use_errno=True)
    while n < MAX_N and time.monotonic() - t0 < TIME_LIMIT_S:
        n += 1
        if mode == "ring":
            (ko,) = args
            fd = os.open(ko, os.O_RDONLY)
            nth.arm(n)
            # finit_module(fd, "", 0): the module loads in this thread.
            ok = libc.syscall(313, fd, b"", 0) == 0
            err = 0 if ok else ctypes.get_errno()
            left = nth.left()
            os.close(fd)
            rc = err
            if ok:
                if libc.syscall(176, b"virtio_ring_rs", os.O_NONBLOCK) != 0:
                    problems.append(f"n={n}: cannot unload: errno {ctypes.get_errno()}")
                    break
            elif loaded("virtio_ring_rs"):
                problems.append(f"n={n}: init failed (errno {err}) but the module is loaded")
            if os.path.exists("/sys/kernel/debug/virtio_ring_rs"):
                problems.append(f"n={n}: its debugfs directory is left")
        elif mode == "pci":
            (bdf,) = args
            dev = f"/sys/bus/pci/devices/{bdf}"
            fd = os.open("/sys/bus/pci/drivers/virtio_pci_rs/bind", os.O_WRONLY)
            rc, left = attempt(nth, n, fd, bdf.encode())
            os.close(fd)
            bound = os.path.exists(f"{dev}/driver")
            if rc == 0 and bound:
                with open("/sys/bus/pci/drivers/virtio_pci_rs/unbind", "w") as f:
                    f.write(bdf)
            elif rc == 0 or bound:
                problems.append(f"n={n}: bind returned {rc} but bound={bound}")
            if os.listdir("/sys/bus/auxiliary/devices"):
                problems.append(f"n={n}: auxiliary devices left: "
                                f"{os.listdir('/sys/bus/auxiliary/devices')}")
            live(problems, n, "after bind" if rc else "after unbind")
            device_idle(bdf, problems, n, "after bind" if rc else "after unbind")
        else:
            bdf, aux, drv = args
            fd = os.open(f"{drv}/bind", os.O_WRONLY)
            rc, left = attempt(nth, n, fd, aux.encode())
            os.close(fd)
            bound = os.path.exists(f"/sys/bus/auxiliary/devices/{aux}/driver")
            if rc == 0 and bound:
                with open(f"{drv}/unbind", "w") as f:
                    f.write(aux)
            elif rc == 0 or bound:
                problems.append(f"n={n}: bind returned {rc} but bound={bound}")
            if [d for d in os.listdir("/sys/kernel/debug/virtio_balloon_rs")
                    if d.startswith("balloon.")] if os.path.isdir(
                        "/sys/kernel/debug/virtio_balloon_rs") else []:
                problems.append(f"n={n}: a balloon debugfs directory is left")
            live(problems, n, "after bind" if rc else "after unbind")
            device_idle(bdf, problems, n, "after bind" if rc else "after unbind")
        if memtotal() != total0:
            problems.append(f"n={n}: MemTotal {memtotal()} kB, was {total0} kB")
            total0 = memtotal()
        if rc != 0:
            failed += 1
            if left != 0:
                # It failed, yet no allocation was failed: something left from before.
                problems.append(f"n={n}: failed with errno {rc} without an injected fault")
        elif left != 0:
            # Through without reaching the n-th allocation: every earlier one was tried.
            clean = True
            break
        if len(problems) > 20:
            break
    return {"mode": mode, "attempts": n, "failed": failed, "clean": clean,
            "seconds": round(time.monotonic() - t0, 1), "problems": problems}


if __name__ == "__main__":
    if sys.argv[1] == "filter":
        print(json.dumps(set_filter(sys.argv[2] == "on")))
    else:
        print(json.dumps(run(sys.argv[1], sys.argv[2:])))
