// SPDX-License-Identifier: GPL-2.0

//! The virtio-rs cross-module contract.
//!
//! Rust-for-Linux has no Rust-to-Rust linking between modules, so the three virtio-rs modules
//! meet at a C ABI.  This file is that ABI, and it is the only source shared between the crates:
//! each crate includes it with `#[path = "common/virtio_rs.rs"]`.  Because an item defined here
//! becomes a distinct type in every crate that includes it, only the `#[repr(C)]` layout carries
//! over; the layouts are pinned with build-time assertions below, and every handle carries a
//! header (magic, version, size) that the receiving side checks before it trusts the rest.
//!
//! Two channels cross module boundaries:
//!
//! * functions exported by `virtio_ring_rs` in the [`NAMESPACE`] symbol namespace (declared in
//!   [`imports`], wrapped safely here); modpost gives the importers a `depends:` on it;
//! * a [`DeviceHandle`] that the transport (`virtio_pci_rs`) owns for each function and publishes
//!   to the device driver through the auxiliary device's registration data, as an address
//!   (`ForLt!(usize)`: only `core` types have the same `TypeId` in every module).

// Not every crate uses every item of the shared contract.
#![allow(dead_code)]

use core::{
    ffi::c_void,
    mem::{
        offset_of,
        size_of, //
    },
};
use kernel::{
    auxiliary,
    device::Bound,
    prelude::*,
    types::ForLt, //
};

/// Symbol namespace of everything `virtio_ring_rs` exports.
pub(crate) const NAMESPACE: &str = "VIRTIO_RS";

/// Magic number at the start of every [`AbiHeader`] ("VIRS" in little-endian byte order).
pub(crate) const ABI_MAGIC: u32 = u32::from_le_bytes(*b"VIRS");

/// Version of this contract.  Bump it on any incompatible change of a type or a signature.
pub(crate) const ABI_VERSION: u32 = 1;

/// `EPROTO`: the other module speaks another version of this contract.
fn eproto() -> Error {
    // CAST: errno values are small positive constants.
    Error::from_errno(-(kernel::bindings::EPROTO as i32))
}

/// Header at the start of every structure handed across a module boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbiHeader {
    /// Always [`ABI_MAGIC`].
    pub(crate) magic: u32,
    /// The [`ABI_VERSION`] the producer was built with.
    pub(crate) version: u32,
    /// `size_of` the enclosing structure, as the producer saw it.
    pub(crate) size: u32,
}

impl AbiHeader {
    /// The header a producer built from this file writes for a structure of type `T`.
    pub(crate) const fn for_type<T>() -> Self {
        Self {
            magic: ABI_MAGIC,
            version: ABI_VERSION,
            // CAST: every ABI structure is far smaller than 4 GiB (asserted below).
            size: size_of::<T>() as u32,
        }
    }

    /// Checks that a header received from another module matches what this module expects
    /// for `T`.
    ///
    /// # Errors
    ///
    /// `EPROTO` if the magic, version or size differ.
    pub(crate) fn check<T>(&self) -> Result {
        if *self == Self::for_type::<T>() {
            Ok(())
        } else {
            Err(eproto())
        }
    }
}

/// Virtio device types (virtio spec 1.x section 5) that the transport names its auxiliary
/// devices after.  The auxiliary device `virtio_pci_rs.<name>.<n>` matches a driver's
/// `auxiliary::DeviceId::new(c"virtio_pci_rs", c"<name>")`.
pub(crate) const DEVICE_NAMES: &[(u32, &CStr)] = &[
    (1, c"net"),
    (2, c"block"),
    (3, c"console"),
    (4, c"rng"),
    (5, c"balloon"),
    (8, c"scsi"),
    (9, c"9p"),
];

/// Device type of the traditional memory balloon.
pub(crate) const VIRTIO_ID_BALLOON: u32 = 5;

/// Name of the module that creates the auxiliary devices (their name prefix).
pub(crate) const TRANSPORT_MODNAME: &CStr = c"virtio_pci_rs";

/// Returns the auxiliary device name for a virtio device type, if the type is known.
pub(crate) fn device_name(device_type: u32) -> Option<&'static CStr> {
    DEVICE_NAMES
        .iter()
        .find(|(id, _)| *id == device_type)
        .map(|(_, name)| *name)
}

/// What a transport publishes for one virtio function.
///
/// # Invariants
///
/// A transport only publishes (as auxiliary registration data) the address of a `DeviceHandle`
/// that is pinned and stays valid, unchanged, until the auxiliary device is deleted, which
/// unbinds the device driver first.
#[repr(C)]
pub(crate) struct DeviceHandle {
    /// Layout check, see [`AbiHeader::check`].
    pub(crate) header: AbiHeader,
    /// The virtio device type (virtio spec section 5).
    pub(crate) device_type: u32,
    /// The feature bits the device offers (legacy: 32 bits).
    pub(crate) host_features: u64,
    /// Transport-private context passed back to the operations (reserved for the transport
    /// operations table of the following contract versions; null for now).
    pub(crate) ctx: *const c_void,
}

// SAFETY: A `DeviceHandle` is plain data that is never mutated once published; `ctx` is only
// an opaque cookie that is never dereferenced by the receiving side.
unsafe impl Send for DeviceHandle {}
// SAFETY: See `Send`: shared references only read immutable plain data.
unsafe impl Sync for DeviceHandle {}

impl DeviceHandle {
    /// Creates the handle a transport publishes for a device.
    pub(crate) const fn new(device_type: u32, host_features: u64) -> Self {
        Self {
            header: AbiHeader::for_type::<Self>(),
            device_type,
            host_features,
            ctx: core::ptr::null(),
        }
    }

    /// The address a transport passes as the auxiliary registration data.
    pub(crate) fn as_registration_data(self: Pin<&Self>) -> usize {
        // CAST: the address of a pinned object; it is only turned back into a reference by
        // `from_auxiliary` under the type invariant.
        core::ptr::from_ref(self.get_ref()) as usize
    }

    /// Finds the handle the transport published for an auxiliary device of ours.
    ///
    /// # Errors
    ///
    /// `ENODEV` if the device was not created by the virtio-rs transport or carries no handle,
    /// `EPROTO` if the handle was made by an incompatible build of the transport.
    pub(crate) fn from_auxiliary<'a>(adev: &'a auxiliary::Device<Bound>) -> Result<&'a Self> {
        let addr = *adev.registration_data::<ForLt!(usize)>()?;
        if addr == 0 || addr % core::mem::align_of::<Self>() != 0 {
            return Err(ENODEV);
        }
        let ptr = addr as *const Self;
        // SAFETY:
        // - Only the virtio-rs transport creates auxiliary devices named `virtio_pci_rs.*`
        //   (the auxiliary bus prefixes device names with the creating module's name), and the
        //   device drivers of this project match only those names.
        // - By the type invariant, the transport registers the address of a pinned, valid
        //   `DeviceHandle` that outlives the auxiliary device, and thus the borrow of `adev`.
        // - The header is read first and is valid for any bit pattern.
        let header = unsafe { core::ptr::addr_of!((*ptr).header).read() };
        header.check::<Self>()?;
        // SAFETY: As above; the header check proved that the producer used this layout.
        Ok(unsafe { &*ptr })
    }
}

/// Signatures of the functions `virtio_ring_rs` exports.  The exporter checks its definitions
/// against these types at build time, so the two sides cannot drift apart.
pub(crate) mod abi_fn {
    /// `virtio_rs_abi_version`: the contract version the ring module was built with.
    pub(crate) type AbiVersion = extern "C" fn() -> u32;
    /// `virtio_rs_vring_size`: bytes of a legacy split ring of `num` entries at `align`, or 0
    /// when `num` is not a valid queue size or `align` not a power of two.
    pub(crate) type VringSize = extern "C" fn(num: u32, align: u32) -> usize;
}

/// Declarations of the functions exported by `virtio_ring_rs` (namespace [`NAMESPACE`]).
mod imports {
    extern "C" {
        pub(super) fn virtio_rs_abi_version() -> u32;
        pub(super) fn virtio_rs_vring_size(num: u32, align: u32) -> usize;
    }
}

/// Checks that the loaded `virtio_ring_rs` implements the contract this module was built with.
///
/// # Errors
///
/// `EPROTO` if `virtio_ring_rs` was built from another contract version.
pub(crate) fn check_ring_abi() -> Result {
    // SAFETY: `virtio_rs_abi_version` takes no arguments, has no preconditions, and its
    // signature is checked against `abi_fn::AbiVersion` by the exporter.
    let version = unsafe { imports::virtio_rs_abi_version() };
    if version == ABI_VERSION {
        Ok(())
    } else {
        pr_err!(
            "virtio_ring_rs implements contract version {}, this module needs {}\n",
            version,
            ABI_VERSION
        );
        Err(eproto())
    }
}

/// Size in bytes of a legacy split virtqueue of `num` entries with the used ring aligned to
/// `align` (virtio 0.9.5 section 2.3), as computed by `virtio_ring_rs`.
///
/// # Errors
///
/// `EINVAL` if `num` is not a power of two in `1..=32768` or `align` not a power of two.
pub(crate) fn vring_size(num: u32, align: u32) -> Result<usize> {
    // SAFETY: `virtio_rs_vring_size` accepts any argument values (invalid ones give 0) and its
    // signature is checked against `abi_fn::VringSize` by the exporter.
    match unsafe { imports::virtio_rs_vring_size(num, align) } {
        0 => Err(EINVAL),
        size => Ok(size),
    }
}

// The layout every module relies on.
const _: () = {
    assert!(size_of::<AbiHeader>() == 12);
    assert!(offset_of!(DeviceHandle, header) == 0);
    assert!(offset_of!(DeviceHandle, device_type) == 12);
    assert!(offset_of!(DeviceHandle, host_features) == 16);
    assert!(offset_of!(DeviceHandle, ctx) == 24);
    assert!(size_of::<DeviceHandle>() == 32);
};
