# SPDX-License-Identifier: GPL-2.0
"""Bring-up: the three modules load as a chain, and the Rust transport binds and unbinds the
legacy balloon function cleanly (and gives it back to the C driver)."""

import os
import subprocess

import vm

MODULES = ("virtio_ring_rs", "virtio_pci_rs", "virtio_balloon_rs")


def modinfo(name, field):
    path = os.path.join(vm.TOP, f"{name}.ko")
    out = subprocess.run(["modinfo", "-F", field, path], check=True, capture_output=True,
                         text=True).stdout
    return [l for l in out.splitlines() if l]


def test_modinfo_is_complete():
    for m in MODULES:
        assert modinfo(m, "license") == ["GPL"], m
        assert modinfo(m, "author"), m
        assert modinfo(m, "description"), m
        assert modinfo(m, "name") == [m]
    for m in ("virtio_pci_rs", "virtio_balloon_rs"):
        assert modinfo(m, "depends") == ["virtio_ring_rs"], m
        assert "VIRTIO_RS" in modinfo(m, "import_ns"), m
    assert "pci:v00001AF4d*sv*sd*bc*sc*i*" in modinfo("virtio_pci_rs", "alias")
    assert "auxiliary:virtio_pci_rs.balloon" in modinfo("virtio_balloon_rs", "alias")


def test_exports_are_namespaced():
    with open(os.path.join(vm.TOP, "Module.symvers")) as f:
        rows = [l.split() for l in f]
    exported = {r[1]: r for r in rows}
    for sym in ("virtio_rs_abi_version", "virtio_rs_vring_size"):
        assert exported[sym][2] == "virtio_ring_rs"
        assert exported[sym][3] == "EXPORT_SYMBOL_GPL"
        assert exported[sym][4] == "VIRTIO_RS"


def test_modprobe_loads_the_chain_in_order(guest):
    guest.sh("modprobe virtio_balloon_rs")
    lsmod = guest.sh("cat /proc/modules")
    loaded = {l.split()[0]: l.split() for l in lsmod.splitlines()}
    assert "virtio_ring_rs" in loaded and "virtio_balloon_rs" in loaded
    # virtio_ring_rs is used by virtio_balloon_rs.
    assert "virtio_balloon_rs" in loaded["virtio_ring_rs"][3]
    guest.sh("modprobe -r virtio_balloon_rs")
    assert "virtio_ring_rs" not in guest.sh("cat /proc/modules")


def test_transport_binds_and_unbinds(guest):
    bdf = guest.balloon_bdf()
    assert guest.driver_of(bdf) == "virtio-pci"
    guest.sh("modprobe virtio_pci_rs")
    guest.bind(bdf, "virtio_pci_rs")
    # The transport published the function as an auxiliary balloon device, and the balloon
    # driver was autoloaded for it through its modalias.
    guest.sh("for i in $(seq 100); do "
             "[ -e /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver ] && exit 0; "
             "sleep 0.2; done; exit 1", timeout=60)
    drv = guest.sh("basename $(readlink /sys/bus/auxiliary/devices/virtio_pci_rs.balloon.*/driver)")
    assert drv.strip() == "virtio_balloon_rs.virtio_balloon_rs"
    aux = guest.sh("ls /sys/bus/auxiliary/devices/").split()
    assert any(a.startswith("virtio_pci_rs.balloon.") for a in aux), aux
    log = "\n".join(guest.new_kernel_log())
    assert "legacy virtio balloon (type 5)" in log
    assert "balloon ready" in log
    guest.unbind(bdf)
    assert not [a for a in guest.sh("ls /sys/bus/auxiliary/devices/").split()
                if a.startswith("virtio_pci_rs.")]
    # Give the function back to the C driver: it must find the device in a sane state.
    guest.bind(bdf, "virtio-pci")
    guest.sh("echo > /sys/bus/pci/devices/%s/driver_override" % bdf)
    guest.sh("rmmod virtio_balloon_rs virtio_pci_rs virtio_ring_rs")
    assert "_rs" not in guest.sh("cut -d' ' -f1 /proc/modules")
