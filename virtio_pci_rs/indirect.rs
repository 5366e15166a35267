// SPDX-License-Identifier: GPL-2.0

//! The transport's allocator of indirect descriptor tables (`VIRTIO_RING_F_INDIRECT_DESC`).
//!
//! The ring asks its transport for a table when it adds a buffer of several elements to a
//! queue that negotiated indirect descriptors, and gives the table back when the buffer
//! completes, is detached, or when the queue is destroyed with buffers still in flight
//! (the [`IndirectAllocFn`] / [`IndirectFreeFn`] pair of the contract).
//!
//! A legacy device reads a table at its guest-physical address, never through the DMA API
//! (it cannot negotiate `VIRTIO_F_ACCESS_PLATFORM`, see `common/legacy_mem.rs`), so a table
//! is plain `kmalloc()` memory given to the device at its physical address, as C's ring does
//! for legacy devices (`kmalloc()` + `virt_to_phys()`).  On x86 that memory is coherent with
//! the device, so the ring may fill a table after allocating it with no synchronisation step.
//!
//! - Allocation honours the ring's `atomic` flag: `GFP_NOWAIT` when the caller may hold a
//!   spinlock or run with interrupts off, `GFP_KERNEL` otherwise, never warning (the ring
//!   falls back to a chain of direct descriptors when no table is available, as C does).
//! - `kfree()` may run in any context, hard-IRQ included, which matters because the ring
//!   frees tables from `get_buf`, which drivers call from their interrupt callbacks.
//! - Tables are 16-byte aligned (the ring needs 8) and physically contiguous (`kmalloc()`
//!   memory is; [`guest_phys`] checks it anyway).
//!
//! One allocator per queue, sized for that queue: a table holds at most `min(queue size,
//! 256)` descriptors (one 4 KiB page, a small allocation that a `GFP_NOWAIT` caller can get);
//! the ring uses a direct chain for larger buffers.
//!
//! Holds `unsafe` for the `extern "C"` allocator the ring calls (its context pointer is the
//! pool), the `kmalloc()` tables it hands out and frees, and their guest-physical addresses.

use crate::abi::{
    guest_phys,
    IndirectAllocFn,
    IndirectFreeFn, //
};
use core::{
    alloc::Layout,
    ffi::c_void,
    ptr::NonNull, //
};
use kernel::{
    alloc::{
        allocator::Kmalloc,
        flags::{
            GFP_KERNEL,
            GFP_NOWAIT,
            __GFP_NOWARN, //
        },
        Allocator,
        NumaNode, //
    },
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
};

/// Size of one descriptor of a split ring (virtio 1.x 2.7.5).
const DESC_SIZE: usize = 16;

/// Largest table the pool hands out: one page.
pub(crate) const MAX_TABLE_BYTES: usize = 4096;

/// Alignment of a table (the ring needs 8; descriptors are 16 bytes).
const TABLE_ALIGN: usize = 16;

/// The indirect tables of one queue.
///
/// # Invariants
///
/// `block` is in `1..=MAX_TABLE_BYTES`; `in_use` counts the tables handed out and not yet
/// freed.
pub(crate) struct IndirectPool {
    block: usize,
    in_use: Atomic<u32>,
}

impl IndirectPool {
    /// The tables of a queue of `num` entries.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a queue of no entries.
    pub(crate) fn new(num: u32) -> Result<Self> {
        let entries = usize::try_from(num)?;
        if entries == 0 {
            return Err(EINVAL);
        }
        // INVARIANT: `entries >= 1`, so the block is in `16..=MAX_TABLE_BYTES`.
        Ok(Self {
            block: entries.saturating_mul(DESC_SIZE).min(MAX_TABLE_BYTES),
            in_use: Atomic::new(0),
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

    /// The layout of a table of `bytes` bytes.
    fn layout(bytes: usize) -> Option<Layout> {
        Layout::from_size_align(bytes, TABLE_ALIGN).ok()
    }

    /// A table of `bytes` bytes and its guest-physical address; `None` if `bytes` is 0 or
    /// larger than the pool's tables, or if no memory is available right now.  With `atomic`,
    /// the allocation neither sleeps nor enters reclaim.
    pub(crate) fn alloc(&self, bytes: usize, atomic: bool) -> Option<(NonNull<c_void>, u64)> {
        if bytes == 0 || bytes > self.block {
            return None;
        }
        let layout = Self::layout(bytes)?;
        let gfp = (if atomic { GFP_NOWAIT } else { GFP_KERNEL }) | __GFP_NOWARN;
        let mem = Kmalloc::alloc(layout, gfp, NumaNode::NO_NODE).ok()?;
        let cpu = mem.cast::<u8>();
        // SAFETY: `cpu` is `bytes` bytes of freshly allocated, linearly mapped memory.
        match unsafe { guest_phys(cpu.as_ptr(), bytes) } {
            Ok(phys) => {
                self.in_use.add(1u32, Relaxed);
                Some((cpu.cast(), phys))
            }
            Err(_) => {
                // SAFETY: Allocated just above with `layout`, never handed out.
                unsafe { Kmalloc::free(cpu, layout) };
                None
            }
        }
    }

    /// Gives a table back.  Any context.
    ///
    /// # Safety
    ///
    /// `cpu` and `bytes` must come from one [`Self::alloc`] of this pool, be freed only once,
    /// and be no longer used by the driver or the device.
    pub(crate) unsafe fn free(&self, cpu: NonNull<c_void>, bytes: usize) {
        let Some(layout) = Self::layout(bytes) else {
            return;
        };
        // SAFETY: `cpu` came from `Kmalloc::alloc` with this layout (the same `bytes`) and is
        // returned once (caller's guarantee).
        unsafe { Kmalloc::free(cpu.cast(), layout) };
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
            // The tables stay allocated (leaked), which is the safe choice: the device might
            // still read them.
            pr_warn!(
                "{} indirect tables still in use when their queue went away\n",
                left
            );
        }
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
/// `ctx` must be the context of [`IndirectPool::callbacks`] of a live pool; `cpu` and `bytes`
/// must describe a table [`indirect_alloc`] returned for that context, freed only once and
/// no longer used.
pub(crate) unsafe extern "C" fn indirect_free(
    ctx: *const c_void,
    cpu: *mut c_void,
    _addr: u64,
    bytes: usize,
) {
    // SAFETY: The caller passes the context of a live pool.
    let pool = unsafe { &*ctx.cast::<IndirectPool>() };
    if let Some(cpu) = NonNull::new(cpu) {
        // SAFETY: The table came from this pool with this size and is returned once (caller's
        // guarantee).
        unsafe { pool.free(cpu, bytes) };
    }
}
