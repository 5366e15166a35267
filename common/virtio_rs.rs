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
//!
//! Holds `unsafe` for the contract's raw side: the imported `extern "C"` functions and the
//! transport's operations table (called through `DeviceHandle`), the interrupt trampolines that
//! rebuild an `Arc` from their context, and `DeviceHandle`'s `Send`/`Sync`.

// Not every crate uses every item of the shared contract.
#![allow(dead_code)]

use core::{
    ffi::c_void,
    mem::{
        offset_of,
        size_of, //
    },
    num::NonZeroUsize,
    ptr::NonNull,
};
use kernel::{
    auxiliary,
    device::Bound,
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
    types::ForLt, //
};

#[path = "legacy_mem.rs"]
mod legacy_mem;

#[path = "virtio.rs"]
pub(crate) mod virtio;

#[path = "workqueue.rs"]
pub(crate) mod workqueue;

#[cfg(virtio_rs_kunit)]
#[path = "switches.rs"]
pub(crate) mod switches;

// Not every crate uses them.
#[allow(unused_imports)]
pub(crate) use legacy_mem::{
    guest_phys,
    LegacyBuf, //
};

/// The symbol namespace of everything `virtio_ring_rs` exports, as a literal (for `concat!`
/// in the exporter); [`NAMESPACE`] is the same string as a constant.
macro_rules! virtio_rs_namespace {
    () => {
        "VIRTIO_RS"
    };
}
#[allow(unused_imports)]
pub(crate) use virtio_rs_namespace;

/// Symbol namespace of everything `virtio_ring_rs` exports.
pub(crate) const NAMESPACE: &str = virtio_rs_namespace!();

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
/// unbinds the device driver first; `ops` and `ctx` stay valid as long.
#[repr(C)]
pub(crate) struct DeviceHandle {
    /// Layout check, see [`AbiHeader::check`].
    pub(crate) header: AbiHeader,
    /// The virtio device type (virtio spec section 5).
    pub(crate) device_type: u32,
    /// The feature bits the device offers (legacy: 32 bits).
    pub(crate) host_features: u64,
    /// The transport's operations.
    pub(crate) ops: *const TransportOps,
    /// Transport-private context passed back to the operations.
    pub(crate) ctx: *const c_void,
}

// SAFETY: A `DeviceHandle` is never mutated once published; the transport's operations may be
// called from any thread (contract of `TransportOps`).
unsafe impl Send for DeviceHandle {}
// SAFETY: See `Send`.
unsafe impl Sync for DeviceHandle {}

/// One queue a driver asks the transport for.
#[repr(C)]
pub(crate) struct VqRequest {
    /// Queue index on the device.
    pub(crate) index: u16,
    /// Padding, zero.
    pub(crate) _reserved: [u16; 3],
    /// Run (in interrupt context) when the queue has used buffers, and once when the queue
    /// breaks because the device went away (then from any context).
    pub(crate) callback: Option<CallbackFn>,
    /// Context of `callback`.
    pub(crate) ctx: *const c_void,
}

/// Operations a transport provides to device drivers (the C `virtio_config_ops`).
///
/// All may sleep; call them from process context.  `find_vqs` and `del_vqs` are serialized by
/// the driver (it calls them from probe and remove).
#[repr(C)]
pub(crate) struct TransportOps {
    /// Layout check, see [`AbiHeader::check`].
    pub(crate) header: AbiHeader,
    /// Accepts the features the driver wants that the device and the transport support;
    /// returns the negotiated set (never the legacy BAD_FEATURE bit 30).
    pub(crate) finalize_features: unsafe extern "C" fn(ctx: *const c_void, driver: u64) -> u64,
    /// Reads a `width`-byte (1, 2 or 4) little-endian field of the device configuration.
    pub(crate) config_read:
        unsafe extern "C" fn(ctx: *const c_void, off: u32, width: u32, val: *mut u32) -> i32,
    /// Writes a `width`-byte field of the device configuration in one access.
    pub(crate) config_write:
        unsafe extern "C" fn(ctx: *const c_void, off: u32, width: u32, val: u32) -> i32,
    /// Creates the requested queues and routes their interrupts; `config` runs (in interrupt
    /// context) on configuration changes until `del_vqs`.
    pub(crate) find_vqs: unsafe extern "C" fn(
        ctx: *const c_void,
        n: u32,
        reqs: *const VqRequest,
        vqs: *mut *mut RawVq,
        config: Option<CallbackFn>,
        config_ctx: *const c_void,
    ) -> i32,
    /// Stops the interrupts, waits for running callbacks, and destroys the queues.
    pub(crate) del_vqs: unsafe extern "C" fn(ctx: *const c_void),
    /// Adds bits to the device status (DRIVER_OK, FAILED).
    pub(crate) add_status: unsafe extern "C" fn(ctx: *const c_void, bits: u8),
    /// Resets the device and waits for running callbacks.
    pub(crate) reset: unsafe extern "C" fn(ctx: *const c_void),
}

/// Device status bit: the driver is ready (virtio spec 2.1).
pub(crate) const STATUS_DRIVER_OK: u8 = 4;

/// Device status bit: the driver gave up on the device.
pub(crate) const STATUS_FAILED: u8 = 0x80;

/// Most queues a driver may request through [`DeviceHandle::find_vqs`].
pub(crate) const MAX_VQS: usize = 8;

/// Callbacks a device driver receives from the transport, in interrupt context.
///
/// The callbacks get the context passed to [`DeviceHandle::find_vqs`], an `Arc<Self::Ctx>`
/// (often `Ctx = Self`; the [`virtio`] façade implements it for a glue type).
pub(crate) trait DeviceCallbacks {
    /// The state the callbacks run on.
    type Ctx: Send + Sync + 'static;
    /// Queue `slot` (the position in the request list) has used buffers.
    fn vq_interrupt(this: ArcBorrow<'_, Self::Ctx>, slot: usize);
    /// The device configuration changed.
    fn config_changed(this: ArcBorrow<'_, Self::Ctx>);
}

/// C-ABI trampoline for [`DeviceCallbacks::vq_interrupt`] of request slot `S`.
///
/// # Safety
///
/// `ctx` must point to a live `T::Ctx`.
unsafe extern "C" fn vq_trampoline<T: DeviceCallbacks, const S: usize>(ctx: *const c_void) {
    // SAFETY: The caller passes the context registered by `find_vqs`, `Arc::as_ptr` of an
    // `Arc<T::Ctx>` that the `Vqs` holding the queues keeps until the transport stopped
    // calling.
    T::vq_interrupt(unsafe { ArcBorrow::from_raw(ctx.cast::<T::Ctx>()) }, S)
}

/// C-ABI trampoline for [`DeviceCallbacks::config_changed`].
///
/// # Safety
///
/// `ctx` must point to a live `T::Ctx`.
unsafe extern "C" fn config_trampoline<T: DeviceCallbacks>(ctx: *const c_void) {
    // SAFETY: As in `vq_trampoline`.
    T::config_changed(unsafe { ArcBorrow::from_raw(ctx.cast::<T::Ctx>()) })
}

/// The trampoline for request slot `slot`.
fn trampoline<T: DeviceCallbacks>(slot: usize) -> Option<CallbackFn> {
    let f: CallbackFn = match slot {
        0 => vq_trampoline::<T, 0>,
        1 => vq_trampoline::<T, 1>,
        2 => vq_trampoline::<T, 2>,
        3 => vq_trampoline::<T, 3>,
        4 => vq_trampoline::<T, 4>,
        5 => vq_trampoline::<T, 5>,
        6 => vq_trampoline::<T, 6>,
        7 => vq_trampoline::<T, 7>,
        _ => return None,
    };
    Some(f)
}

impl DeviceHandle {
    /// Creates the handle a transport publishes for a device.
    pub(crate) const fn new(
        device_type: u32,
        host_features: u64,
        ops: &'static TransportOps,
        ctx: *const c_void,
    ) -> Self {
        Self {
            header: AbiHeader::for_type::<Self>(),
            device_type,
            host_features,
            ops,
            ctx,
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
        // SAFETY:
        // - `ptr` is the address of a pinned, valid `DeviceHandle` that outlives the borrow of
        //   `adev` (the first two points above).
        // - The header check proved that the producer built it with this layout and version.
        let this = unsafe { &*ptr };
        // SAFETY: `ops` is valid as long as the handle (type invariant).
        unsafe { &*this.ops }.header.check::<TransportOps>()?;
        Ok(this)
    }

    fn ops(&self) -> &TransportOps {
        // SAFETY: `ops` is valid as long as the handle (type invariant).
        unsafe { &*self.ops }
    }

    /// Negotiates features: returns what the device, the transport and `driver` all support.
    pub(crate) fn finalize_features(&self, driver: u64) -> u64 {
        // SAFETY: `ctx` belongs to `ops` (type invariant).
        unsafe { (self.ops().finalize_features)(self.ctx, driver) }
    }

    /// Reads the little-endian `width`-byte (1, 2 or 4) configuration field at `off` in one
    /// access.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration or `width` is not 1, 2, 4.
    pub(crate) fn config_read(&self, off: u32, width: u32) -> Result<u32> {
        let mut val = 0;
        // SAFETY:
        // - `ctx` belongs to `ops` (type invariant).
        // - `val` is a valid out pointer for the duration of the call.
        kernel::error::to_result(unsafe {
            (self.ops().config_read)(self.ctx, off, width, &mut val)
        })?;
        Ok(val)
    }

    /// Writes the `width`-byte (1, 2 or 4) configuration field at `off` in one access.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration or `width` is not 1, 2, 4.
    pub(crate) fn config_write(&self, off: u32, width: u32, val: u32) -> Result {
        // SAFETY: `ctx` belongs to `ops` (type invariant).
        kernel::error::to_result(unsafe { (self.ops().config_write)(self.ctx, off, width, val) })
    }

    /// Tells the device the driver is ready (DRIVER_OK).
    pub(crate) fn ready(&self) {
        // SAFETY: `ctx` belongs to `ops`.
        unsafe { (self.ops().add_status)(self.ctx, STATUS_DRIVER_OK) }
    }

    /// Tells the device the driver gave up (FAILED).
    pub(crate) fn fail(&self) {
        // SAFETY: `ctx` belongs to `ops`.
        unsafe { (self.ops().add_status)(self.ctx, STATUS_FAILED) }
    }

    /// Resets the device; when it returns, no callback is running.
    pub(crate) fn reset(&self) {
        // SAFETY: `ctx` belongs to `ops`.
        unsafe { (self.ops().reset)(self.ctx) }
    }

    /// Creates the queues at `indexes` on the device, with `cbs` receiving their interrupts
    /// and configuration changes.
    ///
    /// # Errors
    ///
    /// `EINVAL` for more than [`MAX_VQS`] queues, `ENOENT` for a queue the device does not
    /// have, `E2BIG` when ring memory is out of the legacy interface's reach, `ENOMEM`.
    ///
    /// # Safety
    ///
    /// The returned [`Vqs`] must be dropped before the driver is unbound from the auxiliary
    /// device (the handle is only valid until then).
    pub(crate) unsafe fn find_vqs<T: DeviceCallbacks>(
        &self,
        indexes: &[u16],
        cbs: Arc<T::Ctx>,
    ) -> Result<Vqs<T>> {
        if indexes.len() > MAX_VQS {
            return Err(EINVAL);
        }
        let ctx = Arc::as_ptr(&cbs).cast::<c_void>();
        let mut reqs = KVec::with_capacity(indexes.len(), GFP_KERNEL)?;
        for (slot, &index) in indexes.iter().enumerate() {
            reqs.push(
                VqRequest {
                    index,
                    _reserved: [0; 3],
                    callback: trampoline::<T>(slot),
                    ctx,
                },
                GFP_KERNEL,
            )?;
        }
        let mut raw = KVec::from_elem(core::ptr::null_mut(), indexes.len(), GFP_KERNEL)?;
        // CAST: at most `MAX_VQS` requests.
        let n = reqs.len() as u32;
        // SAFETY: `ctx` belongs to `ops`; `reqs` and `raw` hold `n` entries; the callback
        // context (`cbs`) is kept alive by the returned `Vqs` until `del_vqs` returned.
        kernel::error::to_result(unsafe {
            (self.ops().find_vqs)(
                self.ctx,
                n,
                reqs.as_ptr(),
                raw.as_mut_ptr(),
                Some(config_trampoline::<T>),
                ctx,
            )
        })?;
        let Ok(mut vqs) = KVec::with_capacity(raw.len(), GFP_KERNEL) else {
            // SAFETY: `ctx` belongs to `ops`; this undoes the `find_vqs` above.
            unsafe { (self.ops().del_vqs)(self.ctx) };
            return Err(ENOMEM);
        };
        for p in raw.iter() {
            let handle = NonNull::new(*p).map(|p| {
                // SAFETY: The transport created this queue; it lives until `del_vqs`, which
                // only `Vqs::drop` calls, and this is its only handle.
                unsafe { Virtqueue::from_raw(p) }
            });
            // Cannot fail: the capacity was reserved above.
            let _ = vqs.push(handle, GFP_KERNEL);
        }
        Ok(Vqs {
            handle: NonNull::from(self),
            vqs,
            _cbs: cbs,
        })
    }
}

/// The queues of a device, as its driver owns them; dropping it destroys them.
///
/// # Invariants
///
/// `handle` is valid for the lifetime of the value (guaranteed by the creator of
/// [`DeviceHandle::find_vqs`]), and the queues behind `vqs` live until `Drop`.
pub(crate) struct Vqs<T: DeviceCallbacks> {
    handle: NonNull<DeviceHandle>,
    vqs: KVec<Option<Virtqueue>>,
    _cbs: Arc<T::Ctx>,
}

// SAFETY: The handle is `Sync` and the queue handles are `Send`.
unsafe impl<T: DeviceCallbacks> Send for Vqs<T> {}

impl<T: DeviceCallbacks> Vqs<T> {
    /// The queue of request slot `slot`.
    pub(crate) fn get(&mut self, slot: usize) -> Option<&mut Virtqueue> {
        self.vqs.get_mut(slot).and_then(|v| v.as_mut())
    }

    /// The number of request slots.
    pub(crate) fn len(&self) -> usize {
        self.vqs.len()
    }
}

impl<T: DeviceCallbacks> Drop for Vqs<T> {
    fn drop(&mut self) {
        // Handles go first: nothing uses the queues past this point.
        self.vqs.clear();
        // SAFETY: `handle` is valid (type invariant).
        let handle = unsafe { self.handle.as_ref() };
        // SAFETY: `ctx` belongs to `ops`; this destroys the queues `find_vqs` made, after
        // which no callback runs, so `_cbs` may be released next.
        unsafe { (handle.ops().del_vqs)(handle.ctx) };
    }
}

/// A virtqueue owned by `virtio_ring_rs`; only ever handled by pointer.
#[repr(C)]
pub(crate) struct RawVq {
    _opaque: [u8; 0],
}

/// Transport callback that notifies the device of new buffers in queue `index`; returns
/// false if the device is gone.
pub(crate) type NotifyFn = unsafe extern "C" fn(ctx: *const c_void, index: u16) -> bool;

/// Driver callback run from the interrupt handler when a queue has used buffers.
pub(crate) type CallbackFn = unsafe extern "C" fn(ctx: *const c_void);

/// Transport callback that allocates `bytes` of device-readable memory for an indirect table,
/// storing the address the device uses for it in `*dma` (guest-physical for a legacy
/// device); null on failure.  May be called in atomic context
/// when `atomic` is true.
pub(crate) type IndirectAllocFn = unsafe extern "C" fn(
    ctx: *const c_void,
    bytes: usize,
    atomic: bool,
    dma: *mut u64,
) -> *mut c_void;

/// Transport callback that frees an indirect table from [`IndirectAllocFn`].
pub(crate) type IndirectFreeFn =
    unsafe extern "C" fn(ctx: *const c_void, cpu: *mut c_void, dma: u64, bytes: usize);

/// What a transport passes to `virtio_rs_vq_new` to create a queue.
///
/// The ring memory is the transport's: physically contiguous, DMA-coherent, aligned to 4096
/// bytes and at least `virtio_rs_vring_size(num, 4096)` long; it must stay valid until
/// `virtio_rs_vq_del` returns, as must every context pointer.
#[repr(C)]
pub(crate) struct VqParams {
    /// Layout check, see [`AbiHeader::check`].
    pub(crate) header: AbiHeader,
    /// Queue index on the device.
    pub(crate) index: u16,
    /// Padding, zero.
    pub(crate) _reserved: u16,
    /// Queue size (a power of two, at most 32768).
    pub(crate) num: u32,
    /// Negotiated feature bits (the ring looks at INDIRECT_DESC and EVENT_IDX).
    pub(crate) features: u64,
    /// CPU address of the ring memory.
    pub(crate) ring: *mut c_void,
    /// Address of the ring memory as the device uses it: guest-physical for a legacy device
    /// (see [`LegacyBuf`]), never a DMA handle.
    pub(crate) ring_dma: u64,
    /// Length of the ring memory in bytes.
    pub(crate) ring_len: usize,
    /// Notifies the device.
    pub(crate) notify: Option<NotifyFn>,
    /// Context of `notify`.
    pub(crate) notify_ctx: *const c_void,
    /// The driver's callback, if it wants one.
    pub(crate) callback: Option<CallbackFn>,
    /// Context of `callback`.
    pub(crate) callback_ctx: *const c_void,
    /// Allocates indirect tables (none: the queue never uses them).
    pub(crate) indirect_alloc: Option<IndirectAllocFn>,
    /// Frees indirect tables.
    pub(crate) indirect_free: Option<IndirectFreeFn>,
    /// Context of the indirect-table callbacks.
    pub(crate) indirect_ctx: *const c_void,
}

/// One element of a scatter-gather list: a device address and a length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sg {
    /// Address as the device uses it: guest-physical for a legacy device (see [`LegacyBuf`]).
    pub(crate) addr: u64,
    /// Length in bytes.
    pub(crate) len: u32,
    /// Padding, zero.
    pub(crate) _reserved: u32,
}

impl Sg {
    /// An element of `len` bytes at device address `addr`.
    pub(crate) const fn new(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            _reserved: 0,
        }
    }
}

/// Declares the functions `virtio_ring_rs` exports from one list of signatures: their types
/// in [`abi_fn`] (the exporter checks its definitions against them at build time) and their
/// declarations in `imports` (made from the same signatures and checked against the types
/// too), so that neither side can drift from the contract.  An entry is `Type = safe fn`
/// for a function without preconditions (a safe function pointer, declared `safe`), else
/// `Type = unsafe fn`.
macro_rules! ring_functions {
    ($(
        $(#[doc = $doc:literal])*
        $ty:ident = $safety:ident fn $name:ident($($arg:ident: $argty:ty),* $(,)?) $(-> $ret:ty)?;
    )*) => {
        /// Signatures of the functions `virtio_ring_rs` exports.
        ///
        /// Locking contract (as in C): the caller serializes all calls on one queue, except
        /// `virtio_rs_vq_interrupt`, `virtio_rs_vq_is_broken`, `virtio_rs_vq_break` and
        /// `virtio_rs_vq_len_clamped`, which may run concurrently with anything but
        /// `virtio_rs_vq_del`.
        pub(crate) mod abi_fn {
            #[allow(unused_imports)]
            use super::{c_void, RawVq, Sg, VqParams};

            $(
                ring_functions!(
                    @type $safety, [$(#[doc = $doc])*], $ty, ($($arg: $argty),*) $(-> $ret)?
                );
            )*
        }

        /// Declarations of the functions exported by `virtio_ring_rs` (namespace
        /// [`NAMESPACE`]).
        mod imports {
            use super::{abi_fn, c_void, RawVq, Sg, VqParams};

            unsafe extern "C" {
                $(pub(super) $safety fn $name($($arg: $argty),*) $(-> $ret)?;)*
            }

            $(const _: abi_fn::$ty = $name;)*
        }
    };
    (@type safe, [$($doc:tt)*], $ty:ident, ($($p:tt)*) $($ret:tt)*) => {
        $($doc)*
        pub(crate) type $ty = extern "C" fn($($p)*) $($ret)*;
    };
    (@type unsafe, [$($doc:tt)*], $ty:ident, ($($p:tt)*) $($ret:tt)*) => {
        $($doc)*
        pub(crate) type $ty = unsafe extern "C" fn($($p)*) $($ret)*;
    };
}

ring_functions! {
    /// `virtio_rs_abi_version`: the contract version the ring module was built with.
    AbiVersion = safe fn virtio_rs_abi_version() -> u32;
    /// `virtio_rs_vring_size`: bytes of a legacy split ring of `num` entries at `align`, or 0
    /// when `num` is not a valid queue size or `align` not a power of two.
    VringSize = safe fn virtio_rs_vring_size(num: u32, align: u32) -> usize;
    /// `virtio_rs_ring_features`: the transport feature bits the ring implements.
    RingFeatures = safe fn virtio_rs_ring_features() -> u64;
    /// `virtio_rs_vq_new`: creates a queue; 0 or a negative errno.
    VqNew = unsafe fn virtio_rs_vq_new(params: *const VqParams, vq: *mut *mut RawVq) -> i32;
    /// `virtio_rs_vq_del`: destroys a queue (its buffers must have been detached).
    VqDel = unsafe fn virtio_rs_vq_del(vq: *mut RawVq);
    /// `virtio_rs_vq_add`: exposes `out` readable then `inp` writable elements of `sg` to the
    /// device with a non-null token; 0 or a negative errno (`ENOSPC`, `EIO` when broken).
    VqAdd = unsafe fn virtio_rs_vq_add(vq: *mut RawVq, sg: *const Sg, out: u32, inp: u32,
        token: *mut c_void, atomic: bool) -> i32;
    /// `virtio_rs_vq_kick_prepare`: does the device want a notification?
    VqKickPrepare = unsafe fn virtio_rs_vq_kick_prepare(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_notify`: notifies the device; false if it is gone (the queue is broken).
    VqNotify = unsafe fn virtio_rs_vq_notify(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_get_buf`: the token of the next used buffer (null if none) and the length
    /// the device wrote.
    VqGetBuf = unsafe fn virtio_rs_vq_get_buf(vq: *mut RawVq, len: *mut u32) -> *mut c_void;
    /// `virtio_rs_vq_detach_unused`: a token still owned by the device, for teardown.
    VqDetachUnused = unsafe fn virtio_rs_vq_detach_unused(vq: *mut RawVq) -> *mut c_void;
    /// `virtio_rs_vq_disable_cb`: asks the device not to interrupt.
    VqDisableCb = unsafe fn virtio_rs_vq_disable_cb(vq: *mut RawVq);
    /// `virtio_rs_vq_enable_cb`: re-enables interrupts; false if buffers are already pending
    /// (the caller processes them first).
    VqEnableCb = unsafe fn virtio_rs_vq_enable_cb(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_enable_cb_delayed`: as `VqEnableCb`, but with `EVENT_IDX` asks for the
    /// interrupt only after about three quarters of the outstanding buffers are used; false
    /// if the device is already past that point.
    VqEnableCbDelayed = unsafe fn virtio_rs_vq_enable_cb_delayed(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_interrupt`: the transport's interrupt entry point; true if the queue had
    /// work (the driver's callback ran).
    VqInterrupt = unsafe fn virtio_rs_vq_interrupt(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_is_broken`.
    VqIsBroken = unsafe fn virtio_rs_vq_is_broken(vq: *mut RawVq) -> bool;
    /// `virtio_rs_vq_break`: marks the queue broken (the device went away); the first time,
    /// runs the driver's callback, as an interrupt would, so that a waiting driver notices.
    VqBreak = unsafe fn virtio_rs_vq_break(vq: *mut RawVq);
    /// `virtio_rs_vq_len_clamped`: how many used lengths beyond their buffer's writable
    /// length the ring clamped (a device quirk, not a protocol violation).
    VqLenClamped = unsafe fn virtio_rs_vq_len_clamped(vq: *mut RawVq) -> u32;
    /// `virtio_rs_vq_num_free`: free descriptors.
    VqNumFree = unsafe fn virtio_rs_vq_num_free(vq: *mut RawVq) -> u32;
}

/// Checks that the loaded `virtio_ring_rs` implements the contract this module was built with.
///
/// # Errors
///
/// `EPROTO` if `virtio_ring_rs` was built from another contract version.
pub(crate) fn check_ring_abi() -> Result {
    let version = imports::virtio_rs_abi_version();
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
    match imports::virtio_rs_vring_size(num, align) {
        0 => Err(EINVAL),
        size => Ok(size),
    }
}

/// The transport feature bits (28 and up) that `virtio_ring_rs` implements.
pub(crate) fn ring_features() -> u64 {
    imports::virtio_rs_ring_features()
}

/// A virtqueue, as a transport owns it: created from [`VqParams`], destroyed on drop.
///
/// # Invariants
///
/// `raw` came from `virtio_rs_vq_new` and is destroyed only by `Drop`.
pub(crate) struct OwnedVq {
    raw: NonNull<RawVq>,
}

// SAFETY: A queue may be used from any thread; the ring module's functions have no thread
// affinity, and its locking contract is enforced by the `&mut self` methods of [`Virtqueue`].
unsafe impl Send for OwnedVq {}
// SAFETY: The `&self` methods are the ones the contract allows to run concurrently.
unsafe impl Sync for OwnedVq {}

impl OwnedVq {
    /// Creates a queue.
    ///
    /// # Errors
    ///
    /// `EINVAL` for an invalid size or too little memory, `ENOMEM`, `EPROTO`.
    ///
    /// # Safety
    ///
    /// The memory and every context pointer in `params` must stay valid until the returned
    /// queue is dropped, and the callbacks must be safe to call with their contexts.
    pub(crate) unsafe fn new(params: &VqParams) -> Result<Self> {
        let mut raw = core::ptr::null_mut();
        // SAFETY: `params` is a valid reference and `raw` a valid out pointer; the caller
        // guarantees the lifetime of what `params` points to.
        kernel::error::to_result(unsafe { imports::virtio_rs_vq_new(params, &mut raw) })?;
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        // INVARIANT: `raw` was just created.
        Ok(Self { raw })
    }

    /// The interrupt entry point: runs the driver's callback if the queue has used buffers.
    pub(crate) fn interrupt(&self) -> bool {
        // SAFETY: `raw` is a live queue (invariant); interrupt may run concurrently.
        unsafe { imports::virtio_rs_vq_interrupt(self.raw.as_ptr()) }
    }

    /// Marks the queue broken (the device went away): no buffer is exposed any more, and the
    /// driver's callback runs once so that a driver waiting for the device notices.
    pub(crate) fn mark_broken(&self) {
        // SAFETY: As for `interrupt`.
        unsafe { imports::virtio_rs_vq_break(self.raw.as_ptr()) }
    }

    /// The handle a device driver uses.
    ///
    /// # Safety
    ///
    /// At most one [`Virtqueue`] handle may exist for a queue at a time, and it must not
    /// outlive `self`.
    pub(crate) unsafe fn driver_handle(&self) -> Virtqueue {
        Virtqueue { raw: self.raw }
    }

    /// The raw queue, for the transport's interrupt handlers.
    pub(crate) fn as_raw(&self) -> *mut RawVq {
        self.raw.as_ptr()
    }
}

/// Marks a queue published by pointer broken (see [`OwnedVq::mark_broken`]).
///
/// # Safety
///
/// `raw` must be a live queue.
pub(crate) unsafe fn vq_break_raw(raw: NonNull<RawVq>) {
    // SAFETY: `raw` is live (caller's guarantee); breaking may run concurrently.
    unsafe { imports::virtio_rs_vq_break(raw.as_ptr()) }
}

/// Runs the interrupt entry point of a queue published by pointer (the transport's interrupt
/// handlers keep raw pointers, set and cleared around the queues' lifetime).
///
/// # Safety
///
/// `raw` must be a live queue.
pub(crate) unsafe fn vq_interrupt_raw(raw: NonNull<RawVq>) -> bool {
    // SAFETY: `raw` is live (caller's guarantee); the interrupt entry may run concurrently.
    unsafe { imports::virtio_rs_vq_interrupt(raw.as_ptr()) }
}

impl Drop for OwnedVq {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, `raw` is live and is destroyed exactly once, here.
        unsafe { imports::virtio_rs_vq_del(self.raw.as_ptr()) }
    }
}

/// A device driver's handle on one of its virtqueues.
///
/// Its `&mut self` methods are the calls the ring's locking contract serializes; the borrow
/// checker enforces that contract for Rust drivers.
///
/// # Invariants
///
/// `raw` is a live queue for as long as the handle exists, and no other `Virtqueue` refers to
/// it.
pub(crate) struct Virtqueue {
    raw: NonNull<RawVq>,
}

// SAFETY: See `OwnedVq`: no thread affinity.
unsafe impl Send for Virtqueue {}
// SAFETY: The only `&self` method, `is_broken`, may run concurrently with anything.
unsafe impl Sync for Virtqueue {}

impl Virtqueue {
    /// Builds a handle from a raw queue received from the transport.
    ///
    /// # Safety
    ///
    /// `raw` must be a live queue that outlives the handle, and no other handle may exist.
    pub(crate) unsafe fn from_raw(raw: NonNull<RawVq>) -> Self {
        Self { raw }
    }

    /// Exposes a buffer to the device: `out` readable elements, then `inp` writable ones.
    ///
    /// # Errors
    ///
    /// `ENOSPC` if the ring is full, `EINVAL` if there is no element, `EIO` if the queue is
    /// broken, `ENOMEM` if an indirect table could not be allocated and the ring is too full
    /// for a direct chain.
    pub(crate) fn add(&mut self, out: &[Sg], inp: &[Sg], token: NonZeroUsize) -> Result {
        let total = out.len().checked_add(inp.len()).ok_or(EINVAL)?;
        let mut sg = KVec::with_capacity(total, GFP_KERNEL)?;
        sg.extend_from_slice(out, GFP_KERNEL)?;
        sg.extend_from_slice(inp, GFP_KERNEL)?;
        let out_num = u32::try_from(out.len()).map_err(|_| EINVAL)?;
        let in_num = u32::try_from(inp.len()).map_err(|_| EINVAL)?;
        self.add_raw(&sg, out_num, in_num, token)
    }

    /// Exposes one device-readable element.
    ///
    /// # Errors
    ///
    /// As [`Self::add`].
    pub(crate) fn add_outbuf(&mut self, sg: Sg, token: NonZeroUsize) -> Result {
        self.add_raw(core::slice::from_ref(&sg), 1, 0, token)
    }

    /// Exposes one device-writable element.
    ///
    /// # Errors
    ///
    /// As [`Self::add`].
    pub(crate) fn add_inbuf(&mut self, sg: Sg, token: NonZeroUsize) -> Result {
        self.add_raw(core::slice::from_ref(&sg), 0, 1, token)
    }

    /// Exposes one buffer made of the device-writable elements `inp`, without allocating
    /// (for callers that must not allocate, such as free page reporting).
    ///
    /// # Errors
    ///
    /// As [`Self::add`].
    pub(crate) fn add_inbufs(&mut self, inp: &[Sg], token: NonZeroUsize) -> Result {
        let in_num = u32::try_from(inp.len()).map_err(|_| EINVAL)?;
        self.add_raw(inp, 0, in_num, token)
    }

    fn add_raw(&mut self, sg: &[Sg], out: u32, inp: u32, token: NonZeroUsize) -> Result {
        // SAFETY: `raw` is live (invariant) and `&mut self` serializes the call; `sg` holds
        // `out + inp` elements; a non-zero token is a non-null pointer value.
        kernel::error::to_result(unsafe {
            imports::virtio_rs_vq_add(
                self.raw.as_ptr(),
                sg.as_ptr(),
                out,
                inp,
                token.get() as *mut c_void,
                false,
            )
        })
    }

    /// Notifies the device if it wants to be notified; false if the device is gone.
    pub(crate) fn kick(&mut self) -> bool {
        // SAFETY: `raw` is live and `&mut self` serializes the calls.
        unsafe {
            !imports::virtio_rs_vq_kick_prepare(self.raw.as_ptr())
                || imports::virtio_rs_vq_notify(self.raw.as_ptr())
        }
    }

    /// The next used buffer: its token and the number of bytes the device wrote.
    pub(crate) fn get_buf(&mut self) -> Option<(NonZeroUsize, u32)> {
        let mut len = 0;
        // SAFETY: `raw` is live, `&mut self` serializes the call, `len` is a valid out pointer.
        let token = unsafe { imports::virtio_rs_vq_get_buf(self.raw.as_ptr(), &mut len) };
        // CAST: tokens are the non-zero values passed to `add`.
        NonZeroUsize::new(token as usize).map(|t| (t, len))
    }

    /// A buffer still owned by the device, taken back at teardown (after a reset).
    pub(crate) fn detach_unused(&mut self) -> Option<NonZeroUsize> {
        // SAFETY: As for `get_buf`.
        let token = unsafe { imports::virtio_rs_vq_detach_unused(self.raw.as_ptr()) };
        // CAST: as in `get_buf`.
        NonZeroUsize::new(token as usize)
    }

    /// Asks the device not to interrupt for this queue.
    pub(crate) fn disable_cb(&mut self) {
        // SAFETY: As for `get_buf`.
        unsafe { imports::virtio_rs_vq_disable_cb(self.raw.as_ptr()) }
    }

    /// Re-enables interrupts; false if buffers are already pending.
    pub(crate) fn enable_cb(&mut self) -> bool {
        // SAFETY: As for `get_buf`.
        unsafe { imports::virtio_rs_vq_enable_cb(self.raw.as_ptr()) }
    }

    /// Re-enables interrupts after most of the outstanding buffers are used (EVENT_IDX);
    /// false if buffers are already pending.
    pub(crate) fn enable_cb_delayed(&mut self) -> bool {
        // SAFETY: As for `get_buf`.
        unsafe { imports::virtio_rs_vq_enable_cb_delayed(self.raw.as_ptr()) }
    }

    /// Whether the device misbehaved or went away.
    pub(crate) fn is_broken(&self) -> bool {
        // SAFETY: `raw` is live; `is_broken` may run concurrently with anything.
        unsafe { imports::virtio_rs_vq_is_broken(self.raw.as_ptr()) }
    }

    /// How many used lengths the device reported beyond their buffer's writable length (the
    /// driver got the writable length instead).
    pub(crate) fn len_clamped(&self) -> u32 {
        // SAFETY: `raw` is live; the count may be read concurrently with anything.
        unsafe { imports::virtio_rs_vq_len_clamped(self.raw.as_ptr()) }
    }

    /// Number of free descriptors.
    pub(crate) fn num_free(&mut self) -> u32 {
        // SAFETY: As for `get_buf`.
        unsafe { imports::virtio_rs_vq_num_free(self.raw.as_ptr()) }
    }
}

// The layout every module relies on.
const _: () = {
    assert!(size_of::<AbiHeader>() == 12);
    assert!(offset_of!(DeviceHandle, header) == 0);
    assert!(offset_of!(DeviceHandle, device_type) == 12);
    assert!(offset_of!(DeviceHandle, host_features) == 16);
    assert!(offset_of!(DeviceHandle, ops) == 24);
    assert!(offset_of!(DeviceHandle, ctx) == 32);
    assert!(size_of::<DeviceHandle>() == 40);
    assert!(size_of::<VqRequest>() == 24);
    assert!(offset_of!(TransportOps, finalize_features) == 16);
    assert!(size_of::<TransportOps>() == 72);
    assert!(size_of::<Sg>() == 16);
    assert!(offset_of!(VqParams, index) == 12);
    assert!(offset_of!(VqParams, num) == 16);
    assert!(offset_of!(VqParams, features) == 24);
    assert!(offset_of!(VqParams, ring) == 32);
    assert!(offset_of!(VqParams, notify) == 56);
    assert!(offset_of!(VqParams, indirect_ctx) == 104);
    assert!(size_of::<VqParams>() == 112);
};
