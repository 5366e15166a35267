// SPDX-License-Identifier: GPL-2.0

//! Split virtqueue helpers for legacy virtio devices (driver side).
//!
//! The Rust counterpart of the split-ring half of `drivers/virtio/virtio_ring.c`.  It is a
//! library module: it registers no driver, and exports its functions in the `VIRTIO_RS` symbol
//! namespace to the virtio-rs transport (`virtio_pci_rs`) and device drivers
//! (`virtio_balloon_rs`), which reach them through the safe wrappers of the shared contract
//! in `common/virtio_rs.rs`.
//!
//! Loading it alone does nothing visible; `modprobe virtio_balloon_rs` loads it first.
//!
//! Holds `unsafe` for the exported `extern "C"` functions, which take raw queue handles and
//! buffers from the importers.  The crate's other `unsafe` is in `queue.rs` (DMA ring memory,
//! the queue's serialized state), `core.rs` (the unchecked ring accessors of `View`),
//! `bench.rs` (the benchmark's device) and `kunit.rs`; `export.rs` and `fault.rs` have none.

use core::{
    ffi::c_void,
    ptr::NonNull, //
};
use kernel::prelude::*;

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_ring_rs/export.rs"]
mod export;

#[path = "virtio_ring_rs/core.rs"]
pub mod split;

#[path = "virtio_ring_rs/queue.rs"]
mod queue;

// Test-only: the model of the device side that the KUnit suites and the benchmark play (the
// benchmark needs only the part of a device that completes buffers).
#[cfg(any(virtio_rs_kunit, virtio_rs_bench))]
#[path = "virtio_ring_rs/device.rs"]
pub mod device;

// Test-only: the ring micro-benchmark (`make bench` builds the bench flavour).
#[cfg(virtio_rs_bench)]
#[path = "virtio_ring_rs/bench.rs"]
mod bench;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_ring_rs/kunit.rs"]
mod kunit;

// Test-only: the fault-injection switch (`make stress`, and the KUnit flavour).
#[cfg(any(virtio_rs_kunit, virtio_rs_fault))]
#[path = "virtio_ring_rs/fault.rs"]
mod fault;

use abi::{
    abi_fn,
    RawVq,
    Sg,
    VqParams, //
};
use export::export_symbol_ns_gpl;
use queue::Queue;

/// Bytes of a legacy split ring of `num` entries with the used ring aligned to `align`, or
/// `None` unless `num` is a power of two in `1..=32768` and `align` a power of two.
fn legacy_ring_size(num: u32, align: u32) -> Option<usize> {
    let align = usize::try_from(align).ok()?;
    if !align.is_power_of_two() {
        return None;
    }
    split::Layout::new(num, align).ok().map(|l| l.size())
}

/// Turns a queue pointer received over the ABI into a reference.
///
/// # Safety
///
/// `vq` must come from [`virtio_rs_vq_new`] and not have been passed to [`virtio_rs_vq_del`].
unsafe fn queue<'a>(vq: *mut RawVq) -> &'a Queue {
    // SAFETY: `virtio_rs_vq_new` hands out `KBox<Queue>` pointers, live until deleted (the
    // caller's guarantee).
    unsafe { &*vq.cast::<Queue>() }
}

/// Converts a `Result` to the 0 / negative errno convention of the ABI.
fn errno(r: Result) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// The contract version this module implements (see [`abi::ABI_VERSION`]).
#[no_mangle]
pub(crate) extern "C" fn virtio_rs_abi_version() -> u32 {
    abi::ABI_VERSION
}
export_symbol_ns_gpl!(virtio_rs_abi_version: abi_fn::AbiVersion);

/// Size in bytes of a legacy split ring, or 0 for an invalid `num` or `align`.
#[no_mangle]
pub(crate) extern "C" fn virtio_rs_vring_size(num: u32, align: u32) -> usize {
    legacy_ring_size(num, align).unwrap_or(0)
}
export_symbol_ns_gpl!(virtio_rs_vring_size: abi_fn::VringSize);

/// The transport feature bits this ring implements: indirect descriptors and event index.
#[no_mangle]
pub(crate) extern "C" fn virtio_rs_ring_features() -> u64 {
    (1u64 << split::VIRTIO_RING_F_INDIRECT_DESC) | (1u64 << split::VIRTIO_RING_F_EVENT_IDX)
}
export_symbol_ns_gpl!(virtio_rs_ring_features: abi_fn::RingFeatures);

/// Creates a queue; see [`abi_fn::VqNew`].
///
/// # Safety
///
/// `params` must point to a valid [`VqParams`] whose memory and contexts stay valid until the
/// queue is deleted; `vq` must be valid for a write.
#[no_mangle]
pub(crate) unsafe extern "C" fn virtio_rs_vq_new(
    params: *const VqParams,
    vq: *mut *mut RawVq,
) -> i32 {
    // SAFETY: The caller passes a valid parameter block.
    let params = unsafe { &*params };
    // SAFETY: The caller guarantees the lifetime of the memory and contexts.
    let q = match unsafe { Queue::new(params) }
        .and_then(|q| KBox::new(q, GFP_KERNEL).map_err(Into::into))
    {
        Ok(q) => q,
        Err(e) => return e.to_errno(),
    };
    // SAFETY: The caller passes a valid out pointer.
    unsafe { vq.write(KBox::into_raw(q).cast()) };
    0
}
export_symbol_ns_gpl!(virtio_rs_vq_new: abi_fn::VqNew);

/// Destroys a queue; see [`abi_fn::VqDel`].
///
/// # Safety
///
/// `vq` must come from [`virtio_rs_vq_new`]; it is invalid afterwards, and no other call on
/// it may be running.
#[no_mangle]
pub(crate) unsafe extern "C" fn virtio_rs_vq_del(vq: *mut RawVq) {
    if !vq.is_null() {
        // SAFETY: `vq` is a `KBox<Queue>` from `virtio_rs_vq_new`, deleted once.
        drop(unsafe { KBox::from_raw(vq.cast::<Queue>()) });
    }
}
export_symbol_ns_gpl!(virtio_rs_vq_del: abi_fn::VqDel);

/// Adds a buffer; see [`abi_fn::VqAdd`].
///
/// # Safety
///
/// `vq` is live and the call serialized; `sg` points to `out + inp` elements.
#[no_mangle]
pub(crate) unsafe extern "C" fn virtio_rs_vq_add(
    vq: *mut RawVq,
    sg: *const Sg,
    out: u32,
    inp: u32,
    token: *mut c_void,
    atomic: bool,
) -> i32 {
    let Some(token) = NonNull::new(token) else {
        return EINVAL.to_errno();
    };
    let (Ok(out), Ok(inp)) = (usize::try_from(out), usize::try_from(inp)) else {
        return EINVAL.to_errno();
    };
    let Some(total) = out.checked_add(inp).filter(|&t| t > 0) else {
        return EINVAL.to_errno();
    };
    if sg.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: The caller passes `out + inp` valid elements at `sg`.
    let sg = unsafe { core::slice::from_raw_parts(sg, total) };
    // SAFETY:
    // - `vq` comes from `virtio_rs_vq_new` and is not deleted (this function's contract), as
    //   `queue` requires.
    // - The call is serialized with the queue's other calls (same contract), as `add`
    //   requires.
    errno(unsafe { queue(vq).add(sg, out, token, atomic) })
}
export_symbol_ns_gpl!(virtio_rs_vq_add: abi_fn::VqAdd);

/// Exports the queue operation `$name` (of type `abi_fn::$ty`), which calls `$method` on the
/// queue `vq` points to: `serialized` for an `unsafe` queue method the caller serializes with
/// the queue's other calls, `concurrent` for a safe one that may run concurrently with them.
macro_rules! export_queue_op {
    (serialized $name:ident: $ty:ident $(-> $ret:ty)? = $method:ident($($arg:expr),*)) => {
        #[doc = concat!("See [`abi_fn::", stringify!($ty), "`].")]
        ///
        /// # Safety
        ///
        /// `vq` is live and the call serialized.
        #[no_mangle]
        pub(crate) unsafe extern "C" fn $name(vq: *mut RawVq) $(-> $ret)? {
            // SAFETY:
            // - `vq` comes from `virtio_rs_vq_new` and is not deleted (this function's
            //   contract), as `queue` requires.
            // - The call is serialized with the queue's other calls (same contract), as the
            //   queue method requires.
            unsafe { queue(vq).$method($($arg),*) }
        }
        export_symbol_ns_gpl!($name: abi_fn::$ty);
    };
    (concurrent $name:ident: $ty:ident $(-> $ret:ty)? = $method:ident($($arg:expr),*)) => {
        #[doc = concat!("See [`abi_fn::", stringify!($ty), "`].")]
        ///
        /// # Safety
        ///
        /// `vq` is live.
        #[no_mangle]
        pub(crate) unsafe extern "C" fn $name(vq: *mut RawVq) $(-> $ret)? {
            // SAFETY: `vq` comes from `virtio_rs_vq_new` and is not deleted (this function's
            // contract), as `queue` requires; the method may run concurrently with the others.
            unsafe { queue(vq) }.$method($($arg),*)
        }
        export_symbol_ns_gpl!($name: abi_fn::$ty);
    };
}

export_queue_op!(serialized virtio_rs_vq_kick_prepare: VqKickPrepare -> bool = kick_prepare());

export_queue_op!(concurrent virtio_rs_vq_notify: VqNotify -> bool = notify());

/// See [`abi_fn::VqGetBuf`].
///
/// # Safety
///
/// `vq` is live and the call serialized; `len` is valid for a write (or null).
#[no_mangle]
pub(crate) unsafe extern "C" fn virtio_rs_vq_get_buf(vq: *mut RawVq, len: *mut u32) -> *mut c_void {
    let mut l = 0;
    // SAFETY:
    // - `vq` comes from `virtio_rs_vq_new` and is not deleted (this function's contract), as
    //   `queue` requires.
    // - The call is serialized with the queue's other calls (same contract), as the queue
    //   method requires.
    let token = unsafe { queue(vq).get_buf(&mut l) };
    if !len.is_null() {
        // SAFETY: A non-null `len` is valid for a write (caller's guarantee).
        unsafe { len.write(l) };
    }
    token
}
export_symbol_ns_gpl!(virtio_rs_vq_get_buf: abi_fn::VqGetBuf);

export_queue_op! {
    serialized virtio_rs_vq_detach_unused: VqDetachUnused -> *mut c_void = detach_unused()
}

export_queue_op!(serialized virtio_rs_vq_disable_cb: VqDisableCb = disable_cb());

export_queue_op!(serialized virtio_rs_vq_enable_cb: VqEnableCb -> bool = enable_cb(false));

export_queue_op! {
    serialized virtio_rs_vq_enable_cb_delayed: VqEnableCbDelayed -> bool = enable_cb(true)
}

export_queue_op!(concurrent virtio_rs_vq_interrupt: VqInterrupt -> bool = interrupt());

export_queue_op!(concurrent virtio_rs_vq_is_broken: VqIsBroken -> bool = is_broken());

export_queue_op!(concurrent virtio_rs_vq_break: VqBreak = mark_broken());

export_queue_op!(concurrent virtio_rs_vq_len_clamped: VqLenClamped -> u32 = clamped_lens());

export_queue_op!(serialized virtio_rs_vq_num_free: VqNumFree -> u32 = num_free());

/// The module: a library with no state of its own (but the test-only fault switch).
struct VirtioRingModule {
    #[cfg(any(virtio_rs_kunit, virtio_rs_fault))]
    _fault: fault::Debugfs,
}

impl kernel::Module for VirtioRingModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        #[cfg(virtio_rs_bench)]
        {
            let cycles = *module_parameters::bench_cycles.value();
            if cycles != 0 {
                bench::run(cycles)?;
            }
        }
        Ok(Self {
            #[cfg(any(virtio_rs_kunit, virtio_rs_fault))]
            _fault: fault::Debugfs::new()?,
        })
    }
}

/// The `module!` declaration of the crate, with the extra fields of a flavour (`params`).
macro_rules! ring_module {
    ($($extra:tt)*) => {
        module! {
            type: VirtioRingModule,
            name: "virtio_ring_rs",
            authors: ["The virtio-rs developers"],
            description: "Split virtqueue helpers for legacy virtio devices (Rust)",
            license: "GPL",
            $($extra)*
        }
    };
}

#[cfg(not(virtio_rs_bench))]
ring_module! {}

// The bench flavour's parameter; the production module has none.
#[cfg(virtio_rs_bench)]
ring_module! {
    params: {
        bench_cycles: u32 {
            default: 0,
            description: "Run the ring micro-benchmark for this many cycles at load (0: off)",
        },
    },
}

#[cfg(virtio_rs_kunit)]
#[kunit_tests(virtio_ring_rs_layout)]
mod tests {
    use super::*;

    #[test]
    fn legacy_sizes_match_c() {
        // Values of the C `vring_size()` for align 4096.
        assert_eq!(legacy_ring_size(32, 4096), Some(4358));
        assert_eq!(legacy_ring_size(64, 4096), Some(4614));
        assert_eq!(legacy_ring_size(128, 4096), Some(5126));
        assert_eq!(legacy_ring_size(256, 4096), Some(10246));
        assert_eq!(legacy_ring_size(1024, 4096), Some(28678));
    }

    #[test]
    fn invalid_sizes_are_refused() {
        assert_eq!(legacy_ring_size(0, 4096), None);
        assert_eq!(legacy_ring_size(3, 4096), None);
        assert_eq!(legacy_ring_size(65536, 4096), None);
        assert_eq!(legacy_ring_size(256, 3000), None);
        assert_eq!(virtio_rs_vring_size(100, 4096), 0);
    }

    #[test]
    fn contract_version_is_exported() {
        assert_eq!(virtio_rs_abi_version(), abi::ABI_VERSION);
    }
}
