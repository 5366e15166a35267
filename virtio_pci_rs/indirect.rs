// SPDX-License-Identifier: GPL-2.0

//! The transport's allocator of indirect descriptor tables (`VIRTIO_RING_F_INDIRECT_DESC`).
//!
//! The ring asks its transport for a table when it adds a buffer of several elements to a
//! queue that negotiated indirect descriptors, and gives the table back when the buffer
//! completes, is detached, or when the queue is destroyed with buffers still in flight
//! (the [`IndirectAllocFn`] / [`IndirectFreeFn`] pair of the contract).  The C ring uses
//! `kmalloc()` and maps the table for streaming DMA after filling it; this contract hands the
//! table out before the ring fills it and has no synchronisation step, so the memory must be
//! DMA-coherent.  Small coherent blocks are what a DMA pool (`dma_pool_*()`) is for:
//!
//! - allocation honours the ring's `atomic` flag: `GFP_NOWAIT` when the caller may hold a
//!   spinlock or run with interrupts off, `GFP_KERNEL` otherwise, never warning (the ring
//!   falls back to a chain of direct descriptors when no table is available, as C does);
//! - `dma_pool_free()` may run in any context, hard-IRQ included, which matters because
//!   the ring frees tables from `get_buf`, which drivers call from their interrupt callbacks
//!   (`dma_free_coherent()` may not be called with interrupts disabled);
//! - blocks are 16-byte aligned (the ring needs 8) and never cross a page, so a table is one
//!   physically contiguous piece of device-readable memory below the coherent mask.
//!
//! One pool per queue, sized for that queue: a table holds at most `min(queue size, 256)`
//! descriptors (one 4 KiB page, an order-0 allocation that a `GFP_NOWAIT` caller can get);
//! the ring uses a direct chain for larger buffers.

use crate::abi::{
    IndirectAllocFn,
    IndirectFreeFn, //
};
use core::{
    ffi::c_void,
    ptr::NonNull, //
};
use kernel::{
    bindings, device,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Relaxed, //
        },
    },
};

/// Size of one descriptor of a split ring (virtio 1.x 2.7.5).
const DESC_SIZE: usize = 16;

/// Largest table the pool hands out: one page.
pub(crate) const MAX_TABLE_BYTES: usize = 4096;

/// Alignment of a table (the ring needs 8; descriptors are 16 bytes).
const TABLE_ALIGN: usize = 16;

/// A pool of indirect descriptor tables for one queue.
///
/// # Invariants
///
/// `pool` was created by `dma_pool_create_node()` for `dev` with blocks of `block` bytes and
/// is destroyed only by `Drop`; `in_use` counts the blocks handed out and not yet freed.
pub(crate) struct IndirectPool {
    pool: NonNull<bindings::dma_pool>,
    block: usize,
    in_use: Atomic<u32>,
    dev: ARef<device::Device>,
}

// SAFETY: The DMA pool API locks internally and may be called from any thread and context
// (`dma_pool_alloc()` with a non-blocking gfp, `dma_pool_free()` always).
unsafe impl Send for IndirectPool {}
// SAFETY: See `Send`; the counter is atomic.
unsafe impl Sync for IndirectPool {}

/// `gfp_t` of an allocation made in atomic context (or under a lock reclaim may take).
const GFP_ATOMIC_TABLE: bindings::gfp_t = bindings::GFP_NOWAIT | bindings::__GFP_NOWARN;

/// `gfp_t` of an allocation made in process context.
const GFP_SLEEP_TABLE: bindings::gfp_t = bindings::GFP_KERNEL | bindings::__GFP_NOWARN;

impl IndirectPool {
    /// Creates the pool of a queue of `num` entries for `dev`, whose coherent DMA mask must be
    /// set.  May sleep.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a queue of no entries, `ENOMEM`.
    pub(crate) fn new(dev: &device::Device, num: u32) -> Result<Self> {
        let entries = usize::try_from(num)?;
        if entries == 0 {
            return Err(EINVAL);
        }
        let block = entries.saturating_mul(DESC_SIZE).min(MAX_TABLE_BYTES);
        // CAST: `device::Device` is `#[repr(transparent)]` over `Opaque<bindings::device>`,
        // itself transparent over the C struct, so the two pointers are the same.
        let raw = core::ptr::from_ref(dev)
            .cast::<bindings::device>()
            .cast_mut();
        // SAFETY: `raw` is a valid, registered device (it is borrowed); the name is a valid
        // C string, copied by the callee; `block` and the alignment are within the callee's
        // limits (non-zero, a power-of-two alignment, no boundary).
        let pool = unsafe {
            bindings::dma_pool_create_node(
                c"virtio_rs_indirect".as_char_ptr(),
                raw,
                block,
                TABLE_ALIGN,
                0,
                bindings::NUMA_NO_NODE,
            )
        };
        let pool = NonNull::new(pool).ok_or(ENOMEM)?;
        // INVARIANT: the pool was just created for `dev` with blocks of `block` bytes.
        Ok(Self {
            pool,
            block,
            in_use: Atomic::new(0),
            dev: ARef::from(dev),
        })
    }

    /// The largest table this pool hands out, in bytes (for the tests).
    #[cfg(virtio_rs_kunit)]
    pub(crate) fn max_bytes(&self) -> usize {
        self.block
    }

    /// Tables handed out and not yet freed.
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.load(Relaxed)
    }

    /// A table of `bytes` bytes and its device address; `None` if `bytes` is 0 or larger
    /// than [`Self::max_bytes`], or if no memory is available right now.  With `atomic`, the
    /// allocation neither sleeps nor enters reclaim.
    pub(crate) fn alloc(&self, bytes: usize, atomic: bool) -> Option<(NonNull<c_void>, u64)> {
        if bytes == 0 || bytes > self.block {
            return None;
        }
        let gfp = if atomic {
            GFP_ATOMIC_TABLE
        } else {
            GFP_SLEEP_TABLE
        };
        let mut dma: bindings::dma_addr_t = 0;
        // SAFETY: `pool` is live (type invariant); `dma` is a valid out pointer; a
        // non-blocking gfp makes the call safe in atomic context.
        let cpu = unsafe { bindings::dma_pool_alloc(self.pool.as_ptr(), gfp, &mut dma) };
        let cpu = NonNull::new(cpu)?;
        self.in_use.add(1u32, Relaxed);
        Some((cpu, dma))
    }

    /// Gives a table back.  Any context.
    ///
    /// # Safety
    ///
    /// `cpu` and `dma` must come from one [`Self::alloc`] of this pool, be freed only once,
    /// and be no longer used by the driver or the device.
    pub(crate) unsafe fn free(&self, cpu: NonNull<c_void>, dma: u64) {
        // SAFETY: `pool` is live (type invariant); the block is one of its own, returned
        // once (caller's guarantee).
        unsafe { bindings::dma_pool_free(self.pool.as_ptr(), cpu.as_ptr(), dma) };
        let _ = self.in_use.fetch_sub(1u32, Relaxed);
    }

    /// The allocator callbacks and their context, for [`crate::abi::VqParams`].
    ///
    /// The context is the pool's address: the pool must outlive the queue that gets it.
    pub(crate) fn callbacks(&self) -> (IndirectAllocFn, IndirectFreeFn, *const c_void) {
        (
            indirect_alloc,
            indirect_free,
            core::ptr::from_ref(self).cast(),
        )
    }
}

impl Drop for IndirectPool {
    fn drop(&mut self) {
        let left = self.in_use();
        if left != 0 {
            // `dma_pool_destroy()` keeps (leaks) the memory of a busy pool, which is the safe
            // choice: the device might still read it.
            dev_warn!(
                self.dev,
                "{} indirect tables still in use when their queue went away\n",
                left
            );
        }
        // SAFETY: `pool` is live and destroyed exactly once, here (type invariant).
        unsafe { bindings::dma_pool_destroy(self.pool.as_ptr()) };
    }
}

/// [`IndirectAllocFn`] of the transport: a table from the queue's [`IndirectPool`].
///
/// # Safety
///
/// `ctx` must be the context of [`IndirectPool::callbacks`] of a live pool, and `dma` valid
/// for a write.
pub(crate) unsafe extern "C" fn indirect_alloc(
    ctx: *const c_void,
    bytes: usize,
    atomic: bool,
    dma: *mut u64,
) -> *mut c_void {
    // SAFETY: The caller passes the context of a live pool.
    let pool = unsafe { &*ctx.cast::<IndirectPool>() };
    match pool.alloc(bytes, atomic) {
        Some((cpu, addr)) => {
            // SAFETY: The caller passes a valid out pointer.
            unsafe { dma.write(addr) };
            cpu.as_ptr()
        }
        None => core::ptr::null_mut(),
    }
}

/// [`IndirectFreeFn`] of the transport: gives a table back to the queue's [`IndirectPool`].
///
/// # Safety
///
/// `ctx` must be the context of [`IndirectPool::callbacks`] of a live pool; `cpu` and `dma`
/// must describe a table [`indirect_alloc`] returned for that context, freed only once and
/// no longer used.
pub(crate) unsafe extern "C" fn indirect_free(
    ctx: *const c_void,
    cpu: *mut c_void,
    dma: u64,
    _bytes: usize,
) {
    // SAFETY: The caller passes the context of a live pool.
    let pool = unsafe { &*ctx.cast::<IndirectPool>() };
    if let Some(cpu) = NonNull::new(cpu) {
        // SAFETY: The table came from this pool and is returned once (caller's guarantee).
        unsafe { pool.free(cpu, dma) };
    }
}
