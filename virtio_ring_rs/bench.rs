// SPDX-License-Identifier: GPL-2.0

//! Ring micro-benchmark: the real [`Queue`] against a device simulated in memory.
//!
//! `insmod virtio_ring_rs.ko bench_cycles=N` runs `N` cycles of add + kick_prepare (+ notify
//! when the device asks for it) + device completion + get_buf on a 256-entry queue with
//! `VIRTIO_RING_F_EVENT_IDX`, and logs the mean time of one cycle, and the mean of the fastest
//! of [`BATCHES`] equal batches (the figure least disturbed by a busy host):
//!
//! ```text
//! virtio_ring_rs: bench: 1000000 cycles, 412.3 ns/cycle (fastest of 20 batches: 398.0 ns/cycle)
//! ```
//!
//! `tests/bench/vring_bench_c.c` runs the same cycle, printed the same way, on the kernel's C
//! `virtio_ring`; `make bench` compares the two.
//!
//! The queue is created through [`Queue::new`] as the transport does, over ordinary kernel
//! memory whose CPU address stands for the DMA address (nothing does DMA).  The benchmark
//! plays the device with the ring's device model ([`DeviceRing`]) through a second view of
//! that memory: it takes the head from the avail ring, writes the used element, a write
//! barrier and the used index, and asks to be notified of the next buffer (`avail_event`, as
//! QEMU does).  The time includes the (empty) notification call and the device's checked
//! accesses, so it is an upper bound of the driver-side cost.
//!
//! Compiled only into the bench flavour of the module (`--cfg virtio_rs_bench`).
//!
//! Holds `unsafe`: the benchmark creates a queue over ordinary memory and gives the device
//! model a raw view of it.

use crate::{
    abi::{
        AbiHeader,
        Sg,
        VqParams, //
    },
    device::DeviceRing,
    queue::{
        DmaMem,
        Queue, //
    },
    split::{
        self,
        Layout, //
    },
};
use core::{
    ffi::c_void,
    ptr::NonNull, //
};
use kernel::{
    prelude::*,
    time::{
        Instant,
        Monotonic, //
    },
};

/// Queue size of the benchmark.
const NUM: u16 = 256;

/// Bytes the device "writes" into each buffer.
const BUF_LEN: u32 = 4096;

/// The cycles are timed in this many equal batches (the last one takes the remainder).
const BATCHES: u32 = 20;

/// The notification: the simulated device needs none, and it is never gone.
///
/// # Safety
///
/// None: it touches nothing (declared `unsafe` to match [`crate::abi::NotifyFn`]).
unsafe extern "C" fn notify(_ctx: *const c_void, _index: u16) -> bool {
    true
}

/// Runs `cycles` add + kick-prepare + device completion + get_buf cycles and logs ns/cycle.
///
/// # Errors
///
/// `ENOMEM`, or `EIO` if the queue hands back something other than what the device
/// completed (a bug, logged).
pub(crate) fn run(cycles: u32) -> Result {
    let layout = Layout::new(NUM.into(), split::VRING_ALIGN).map_err(|_| EINVAL)?;
    let mut ring = KVec::<u64>::from_elem(0, layout.size().div_ceil(8), GFP_KERNEL)?;
    let len = ring.len() * 8;
    let ptr = ring.as_mut_ptr().cast::<c_void>();
    let params = VqParams {
        header: AbiHeader::for_type::<VqParams>(),
        index: 0,
        _reserved: 0,
        num: NUM.into(),
        features: 1 << split::VIRTIO_RING_F_EVENT_IDX,
        ring: ptr,
        // CAST: the CPU address stands for the DMA address; nothing does DMA.
        ring_dma: ptr as u64,
        ring_len: len,
        notify: Some(notify),
        notify_ctx: core::ptr::null(),
        callback: None,
        callback_ctx: core::ptr::null(),
        indirect_alloc: None,
        indirect_free: None,
        indirect_ctx: core::ptr::null(),
    };
    // SAFETY:
    // - `params.ring` is `ring`, `len` bytes of memory that outlives `queue` (declared later,
    //   so dropped first) and is never referenced.
    // - `notify` needs no context, and there are no callbacks or indirect tables.
    let queue = unsafe { Queue::new(&params)? };
    // SAFETY:
    // - `ptr` is valid for `len` bytes while `dev` lives: `ring` is declared earlier, so it
    //   is dropped after `dev`.
    // - `ptr` is 8-byte aligned (`KVec<u64>`).
    // - Nothing holds a reference to that memory.
    let dev = unsafe { DmaMem::new(ptr, len)? };
    let mut device = DeviceRing::new(layout, true);

    let sg = [Sg::new(0x10_0000, BUF_LEN)];
    let marker = 0u8;
    // Any non-null value will do: the queue never dereferences tokens.
    let token = NonNull::from(&marker).cast::<c_void>();
    let mut notifies = 0u32;

    // One cycle: add, kick_prepare (+ notify), the device's completion, get_buf.
    let mut cycle = || -> Result {
        // SAFETY: This function is the queue's only user, on one thread, so the queue calls
        // are serialized as the locking contract asks.
        unsafe { queue.add(&sg, 0, token, false)? };
        // SAFETY: This function is the queue's only user, on one thread: serialized.
        if unsafe { queue.kick_prepare() } {
            queue.notify();
            notifies += 1;
        }

        // The device: one new buffer, completed in full.  One buffer per cycle: the avail
        // and used indexes move in step.
        let Some(head) = device.pop_head(&dev) else {
            pr_err!("bench: avail index out of step\n");
            return Err(EIO);
        };
        device.push(&dev, head.into(), BUF_LEN);
        device.set_avail_event(&dev, device.used_idx());

        let mut len = 0;
        // SAFETY: This function is the queue's only user, on one thread: serialized.
        let got = unsafe { queue.get_buf(&mut len) };
        if got != token.as_ptr() || len != BUF_LEN {
            pr_err!("bench: the queue returned the wrong buffer\n");
            return Err(EIO);
        }
        Ok(())
    };

    let per_batch = cycles / BATCHES;
    let mut total_ns = 0u64;
    // Fastest batch, in picoseconds per cycle.
    let mut best_ps = u64::MAX;
    for batch in 0..BATCHES {
        let n = if batch == BATCHES - 1 {
            cycles - per_batch * (BATCHES - 1)
        } else {
            per_batch
        };
        let start = Instant::<Monotonic>::now();
        for _ in 0..n {
            cycle()?;
        }
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        total_ns = total_ns.saturating_add(ns);
        if n != 0 {
            best_ps = best_ps.min(ns.saturating_mul(1000) / u64::from(n));
        }
    }

    let ps = total_ns.saturating_mul(1000) / u64::from(cycles.max(1));
    let best_ps = if best_ps == u64::MAX { ps } else { best_ps };
    pr_info!(
        "bench: {} cycles, {}.{} ns/cycle (fastest of {} batches: {}.{} ns/cycle)\n",
        cycles,
        ps / 1000,
        ps % 1000 / 100,
        BATCHES,
        best_ps / 1000,
        best_ps % 1000 / 100
    );
    if notifies != cycles {
        pr_warn!("bench: {} notifications for {} cycles\n", notifies, cycles);
    }
    Ok(())
}
