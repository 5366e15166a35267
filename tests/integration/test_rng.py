# SPDX-License-Identifier: GPL-2.0
"""virtio_rng_rs against QEMU's legacy entropy device (`virtio-rng-pci,disable-modern=on`,
1af4:1005), with the C `virtio_rng` on the same function as the reference, in one guest:

- the C stack (built-in `virtio-pci` + `virtio_rng`) reads from the device: the device works;
- on the Rust stack (`virtio_pci_rs` + `virtio_rng_rs`) `/dev/hwrng` yields data that is not
  constant, `rng_current` names `virtio_rng_rs.<n>`, and the C driver, still loaded, holds no
  rng any more;
- a device that never answers (the transport's test switch `drop_kicks` drops every queue
  notification) makes reads fail with ETIMEDOUT after about `timeout_ms` instead of hanging;
  reads work again once the device does;
- unbinding the function, and `rmmod virtio_rng_rs`, with a read in flight (the device
  silent, `timeout_ms` far longer than the test waits) complete promptly: the reader gets an
  error, the kernel logs no problem.

The drop_kicks switch exists only in the test flavour of the modules, so the guest (one of
its own: the shared guest carries the balloon) installs the modules of
`$VIRTIO_RS_KUNIT_DIR` at boot."""

import os
import time

KUNIT_DIR = os.environ.get("VIRTIO_RS_KUNIT_DIR")
RNG = "virtio-rng-pci,id=rng0,disable-modern=on"
# Boots take minutes under TCG on a loaded 2-core host.
GUEST_OPTIONS = {"devices": (RNG,), "boot_timeout": 600}
if KUNIT_DIR:
    GUEST_OPTIONS["moddir"] = KUNIT_DIR
HWRNG = "/sys/class/misc/hw_random"
SWITCH = "/sys/kernel/debug/virtio_pci_rs"

# The read timeout the silent-device test loads the driver with, and the one that makes a
# read outlast the unbind tests by far.
SHORT_TIMEOUT_MS = 500
LONG_TIMEOUT_MS = 120_000
# A read waits for the device at most twice its timeout: the hw_random core's own fill
# thread may hold the core's read lock for one timeout first.  Under TCG on a loaded host a
# guest command also takes up to several seconds by itself.
SLACK_S = 15
# What "promptly" means for an unbind with a read in flight: far below LONG_TIMEOUT_MS.
PROMPT_S = 20


def rng_bdf(g):
    out = g.sh("for d in /sys/bus/pci/devices/*; do "
               "[ \"$(cat $d/vendor):$(cat $d/device)\" = 0x1af4:0x1005 ] && basename $d; "
               "done; true")
    bdfs = out.split()
    assert len(bdfs) == 1, f"expected one legacy entropy device, found {bdfs}"
    return bdfs[0]


def rng_current(g):
    return g.sh(f"cat {HWRNG}/rng_current").strip()


def rng_available(g):
    return g.sh(f"cat {HWRNG}/rng_available").split()


def read_hwrng(g, nbytes, timeout=60):
    """Read `nbytes` from /dev/hwrng: (rc, bytes as hex, dd's messages, seconds)."""
    t0 = time.monotonic()
    rc, out = g.run(
        f"timeout {timeout} dd if=/dev/hwrng bs={nbytes} count=1 iflag=fullblock "
        f"of=/tmp/rng.out 2>/tmp/rng.err; rc=$?; echo rc=$rc; "
        f"od -An -v -tx1 /tmp/rng.out | tr -d ' \\n'; echo; cat /tmp/rng.err",
        timeout=timeout + 60)
    took = time.monotonic() - t0
    lines = out.splitlines()
    assert lines and lines[0].startswith("rc="), out
    return int(lines[0][3:]), (lines[1] if len(lines) > 1 else ""), "\n".join(lines[2:]), took


def to_c(g, bdf):
    g.sh(f"""
        d=/sys/bus/pci/devices/{bdf}
        echo > $d/driver_override
        if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi
        echo {bdf} > /sys/bus/pci/drivers_probe
        [ "$(basename $(readlink $d/driver))" = virtio-pci ]
    """)


def to_rust(g, bdf, timeout_ms):
    """Bind the function to the Rust stack with `timeout_ms`; the rng it registers."""
    g.sh("grep -q '^virtio_rng_rs ' /proc/modules && rmmod virtio_rng_rs; "
         f"modprobe virtio_pci_rs && modprobe virtio_rng_rs timeout_ms={timeout_ms}")
    g.bind(bdf, "virtio_pci_rs")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = [n for n in rng_available(g) if n.startswith("virtio_rng_rs.")]
        if names:
            return names[0]
        time.sleep(0.5)
    raise AssertionError(f"no virtio_rng_rs rng registered: {rng_available(g)}\n"
                         + "\n".join(g.kernel_log().splitlines()[-20:]))


def set_switch(g, name, value):
    g.sh(f"echo {value} > {SWITCH}/{name}")


def test_c_driver_reads(guest):
    """The reference: the C stack reads from the same device."""
    bdf = rng_bdf(guest)
    to_c(guest, bdf)
    guest.sh("modprobe virtio_rng")
    deadline = time.monotonic() + 30
    while not any(n.startswith("virtio_rng.") for n in rng_available(guest)):
        assert time.monotonic() < deadline, f"C virtio_rng registered nothing: {rng_available(guest)}"
        time.sleep(0.5)
    assert rng_current(guest).startswith("virtio_rng."), rng_current(guest)
    rc, data, err, took = read_hwrng(guest, 4096)
    assert rc == 0, err
    assert len(data) == 2 * 4096 and data != "00" * 4096
    print(f"C virtio_rng: 4096 bytes in {took:.2f} s")


def test_rust_driver_reads(guest):
    bdf = rng_bdf(guest)
    name = to_rust(guest, bdf, SHORT_TIMEOUT_MS)
    assert rng_current(guest) == name
    # The C driver is still loaded but lost the device with the function.
    assert not any(n.startswith("virtio_rng.") for n in rng_available(guest)), \
        rng_available(guest)
    rc1, first, err1, took = read_hwrng(guest, 4096)
    assert rc1 == 0, err1
    rc2, second, err2, _ = read_hwrng(guest, 4096)
    assert rc2 == 0, err2
    assert len(first) == len(second) == 2 * 4096
    assert first != second and first != "00" * 4096
    # Not one byte repeated: a 4 KiB read is many device buffers.
    assert len(set(first[i:i + 2] for i in range(0, len(first), 2))) > 16
    print(f"virtio_rng_rs: 4096 bytes in {took:.2f} s")
    assert any("entropy source " + name + " ready" in l for l in guest.kernel_log().splitlines())


def test_silent_device_times_out(guest):
    bdf = rng_bdf(guest)
    to_rust(guest, bdf, SHORT_TIMEOUT_MS)
    dropped = int(guest.sh(f"cat {SWITCH}/dropped_kicks"))
    set_switch(guest, "drop_kicks", 1)
    try:
        # A buffer the device took before the switch may still answer one read.
        for _ in range(3):
            rc, _, err, took = read_hwrng(guest, 64)
            if rc != 0:
                break
        assert rc not in (0, 124), f"rc {rc}: {err}"  # 124: the read hung until `timeout`
        assert "timed out" in err, err
        assert took < 2 * SHORT_TIMEOUT_MS / 1000 + SLACK_S, took
        assert int(guest.sh(f"cat {SWITCH}/dropped_kicks")) > dropped
    finally:
        set_switch(guest, "drop_kicks", 0)
    # The device answers again: the next read notifies it anew.
    rc, data, err, _ = read_hwrng(guest, 64)
    assert rc == 0, err
    assert len(data) == 128


def start_stuck_read(g):
    """Make the device silent and start a read that waits for it, in the background."""
    set_switch(g, "drop_kicks", 1)
    g.sh("(dd if=/dev/hwrng bs=64 count=1 of=/dev/null 2>/tmp/stuck.err; "
         "echo $? > /tmp/stuck.rc) >/dev/null 2>&1 & echo $! > /tmp/stuck.pid")
    # Let it reach the driver (or queue behind the core's fill thread, also stuck in it).
    time.sleep(3)
    assert g.run("kill -0 $(cat /tmp/stuck.pid)", check=False)[0] == 0, \
        "the read did not wait for the silent device"


def finish_stuck_read(g):
    deadline = time.monotonic() + PROMPT_S
    while g.run("kill -0 $(cat /tmp/stuck.pid) 2>/dev/null", check=False)[0] == 0:
        assert time.monotonic() < deadline, "the read in flight did not end"
        time.sleep(0.5)
    rc = int(g.sh("cat /tmp/stuck.rc"))
    assert rc != 0, "a read from a silent, removed device returned data"


def test_unbind_with_read_in_flight(guest):
    bdf = rng_bdf(guest)
    name = to_rust(guest, bdf, LONG_TIMEOUT_MS)
    try:
        start_stuck_read(guest)
        t0 = time.monotonic()
        guest.unbind(bdf)
        took = time.monotonic() - t0
        finish_stuck_read(guest)
    finally:
        set_switch(guest, "drop_kicks", 0)
    assert took < PROMPT_S, f"unbind took {took:.1f} s"
    assert name not in rng_available(guest)


def test_rmmod_with_read_in_flight(guest):
    bdf = rng_bdf(guest)
    to_rust(guest, bdf, LONG_TIMEOUT_MS)
    try:
        start_stuck_read(guest)
        t0 = time.monotonic()
        guest.sh("rmmod virtio_rng_rs", timeout=PROMPT_S + 60)
        took = time.monotonic() - t0
        finish_stuck_read(guest)
    finally:
        set_switch(guest, "drop_kicks", 0)
    assert took < PROMPT_S, f"rmmod took {took:.1f} s"
    assert not any(n.startswith("virtio_rng_rs.") for n in rng_available(guest))
    # The device is still usable: the driver again, now that it answers.
    to_rust(guest, bdf, SHORT_TIMEOUT_MS)
    rc, _, err, _ = read_hwrng(guest, 64)
    assert rc == 0, err
