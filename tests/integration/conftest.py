# SPDX-License-Identifier: GPL-2.0
"""Fixtures of the integration tests: guests with QEMU's legacy balloon.

Boots dominate the time of these tests under TCG, so the test files share one guest: a q35
machine with the legacy balloon behind a PCIe root port, which QEMU hot-plugs through ACPI.
A file says which balloon it needs with ``BALLOON = {property: value}`` (QEMU device
properties on top of the legacy defaults, e.g. ``{"vectors": 0}`` for INTx) and which module
flavour with ``FLAVOUR = "kunit"`` (the test flavour from ``$VIRTIO_RS_KUNIT_DIR``; the
production ``.ko`` files otherwise).  Before each file the shared guest is brought back to a
known state: the Rust modules unloaded, the balloon function on the C driver with an empty
balloon, re-plugged when the file wants other properties than the current device has, and
the wanted flavour installed for modprobe.  A file that needs a machine of its own (a kernel
command line, other QEMU options) says so with ``GUEST_OPTIONS`` (``vm.Guest`` arguments) and
gets a guest for itself, of the class ``GUEST_CLASS`` if it sets one (``plain_vm.PlainGuest``
for a guest QEMU can migrate).

Every test that uses a guest also fails when the kernel logged a warning, BUG, Oops or a
lockdep report while it ran.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import balloon as b  # noqa: E402
import vm  # noqa: E402
from fixtures import no_kernel_problems, sort_by_file  # noqa: E402,F401

KUNIT_DIR = os.environ.get("VIRTIO_RS_KUNIT_DIR", "")
RAM = b.RAM

# The order of the files (pytest would sort them by name): the shared guest goes from the
# gentlest tests to those that squeeze its memory.
ORDER = ["test_bringup", "test_kunit", "test_balloon_msix", "test_balloon_intx",
         "test_parity_c", "test_migration", "test_transport_faults", "test_balloon_pressure",
         "test_slow_ack",
         "test_balloon_hostile"]


def pytest_collection_modifyitems(session, config, items):
    # Files that share the guest first (in ORDER), then those with guests of their own.
    sort_by_file(items, ORDER)
    shared = {i.module.__name__ for i in items if not hasattr(i.module, "GUEST_OPTIONS")}
    SHARED_FILES_LEFT.clear()
    SHARED_FILES_LEFT.update(shared)


# The shared-guest files of this session not yet finished: when the last one is done, the
# shared guest shuts down, so that a run never keeps it idle beside a file's own guest.
SHARED_FILES_LEFT = set()


class Shared:
    """The shared guest and what its balloon device and module flavour are now."""

    def __init__(self):
        self.guest = None
        self.props = {}
        self.flavour = "prod"

    def get(self):
        if self.guest is None:
            g = vm.Guest("shared", devices=(b.ROOT_PORT, b.BALLOON))
            try:
                g.start()
            except vm.GuestError:
                g.cleanup()
                raise
            self.guest = g
        return self.guest

    def prepare(self, props, flavour):
        """Bring the shared guest to a known state for the next file."""
        g = self.get()
        g.new_kernel_log()
        bdf = g.balloon_bdf() if b.balloon_present(g) else None
        if bdf is not None and g.driver_of(bdf) == "virtio_pci_rs":
            # Unbinding the Rust stack resets the device and returns every page.
            g.unbind(bdf)
        b.rmmod_all(g)
        if props != self.props or bdf is None:
            if bdf is not None:
                b.unplug(g)
            b.plug(g, **props)
            self.props = props
            bdf = g.balloon_bdf()
        b.set_target(g, RAM)
        # A plugged function makes udev autoload every driver whose alias matches, the Rust
        # transport among them (from the flavour installed then): let it settle and unload
        # what it loaded before installing the flavour this file wants.
        g.sh("udevadm settle -t 60 || true", timeout=120)
        b.rmmod_all(g)
        if flavour != self.flavour:
            moddir = KUNIT_DIR if flavour == "kunit" else vm.TOP
            assert os.path.exists(os.path.join(moddir, "virtio_ring_rs.ko")), \
                f"no {flavour} flavour .ko files in {moddir!r} (VIRTIO_RS_KUNIT_DIR)"
            g.sh(f"cp {moddir}/*.ko /lib/modules/$(uname -r)/extra/ && depmod -a")
            self.flavour = flavour
        g.sh(f"d=/sys/bus/pci/devices/{bdf}; echo > $d/driver_override; "
             f"[ -e $d/driver ] || echo {bdf} > /sys/bus/pci/drivers_probe")
        b.wait_actual(g, RAM)
        # What this preparation logged is not the next test's business.
        g.new_kernel_log()
        return g

    def cleanup(self):
        if self.guest is not None:
            self.guest.cleanup()
            self.guest = None


@pytest.fixture(scope="session")
def shared_guest():
    s = Shared()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def guest(request, shared_guest):
    """The guest of one test file: the shared one, prepared for the file, or one of its own
    when the file sets GUEST_OPTIONS."""
    own = getattr(request.module, "GUEST_OPTIONS", None)
    if own is not None:
        # GUEST_CLASS: another kind of guest (`plain_vm.PlainGuest`, which QEMU can migrate).
        cls = getattr(request.module, "GUEST_CLASS", vm.Guest)
        g = cls(request.module.__name__.split(".")[-1], **own)
        try:
            g.start()
            yield g
        finally:
            g.cleanup()
        return
    props = getattr(request.module, "BALLOON", {})
    flavour = getattr(request.module, "FLAVOUR", "prod")
    yield shared_guest.prepare(props, flavour)
    SHARED_FILES_LEFT.discard(request.module.__name__)
    if not SHARED_FILES_LEFT:
        shared_guest.cleanup()
