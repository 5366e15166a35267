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
//! plays the device through a second view of that memory: it takes the head from the avail
//! ring, asks to be notified of the next buffer (`avail_event`, as QEMU does), and writes the
//! used element, a write barrier ([`device_wmb`]) and the used index.  The time includes the
//! (empty) notification call, so it is an upper bound of the driver-side cost.
//!
//! Holds `unsafe`: the benchmark creates a queue over ordinary memory and plays the device over
//! a raw view of it.

use crate::{
    abi::{
        AbiHeader,
        Sg,
        VqParams, //
    },
    queue::{
        DmaMem,
        Queue, //
    },
    split::{
        self,
        Layout,
        RingMem, //
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
    // SAFETY: `ring` outlives `queue` (declared later, so dropped first) and is never
    // referenced; `notify` needs no context.
    let queue = unsafe { Queue::new(&params)? };
    // SAFETY: As above, for the device's view; `ptr` is 8-byte aligned (`KVec<u64>`).
    let dev = unsafe { DmaMem::new(ptr, len)? };

    let mask = NUM - 1;
    let avail_idx = layout.avail_offset() + 2;
    let avail_ring = |slot: u16| layout.avail_offset() + 4 + 2 * usize::from(slot);
    let used_idx = layout.used_offset() + 2;
    let used_elem = |slot: u16| layout.used_offset() + 4 + 8 * usize::from(slot);
    let avail_event = used_elem(NUM);

    let sg = [Sg::new(0x10_0000, BUF_LEN)];
    let marker = 0u8;
    // Any non-null value will do: the queue never dereferences tokens.
    let token = NonNull::from(&marker).cast::<c_void>();
    let mut next: u16 = 0;
    let mut notifies = 0u32;

    // One cycle: add, kick_prepare (+ notify), the device's completion, get_buf.
    let mut cycle = || -> Result {
        // SAFETY: This function is the queue's only user, on one thread, so the queue calls
        // are serialized as the locking contract asks.
        unsafe { queue.add(&sg, 0, token, false)? };
        // SAFETY: As above.
        if unsafe { queue.kick_prepare() } {
            queue.notify();
            notifies += 1;
        }

        // The device: one new buffer, completed in full.  It accesses the ring as C's
        // benchmark does (`READ_ONCE`/`WRITE_ONCE`, no bounds checks), so that both measure
        // the same device.
        // SAFETY: Every offset is a field of `layout`, with slots below `NUM`, and `dev`
        // covers `layout.size()` bytes: in bounds and aligned (the invariants of `Layout`).
        unsafe {
            if dev.read_u16_unchecked(avail_idx) != next.wrapping_add(1) {
                pr_err!("bench: avail index out of step\n");
                return Err(EIO);
            }
            // One buffer per cycle: the avail and used indexes move in step.
            let slot = next & mask;
            let head = dev.read_u16_unchecked(avail_ring(slot));
            dev.write_u32_unchecked(used_elem(slot), head.into());
            dev.write_u32_unchecked(used_elem(slot) + 4, BUF_LEN);
            next = next.wrapping_add(1);
            dev.write_u16_unchecked(avail_event, next);
            // Orders the used element before the used index that publishes it.
            device_wmb();
            dev.write_u16_unchecked(used_idx, next);
        }

        let mut len = 0;
        // SAFETY: As above.
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

/// The simulated device's write barrier: `smp_wmb()`, inline as in the C benchmark.
///
/// On x86 `smp_wmb()` is a compiler barrier (`arch/x86/include/asm/barrier.h`), which C inlines
/// while `kernel::sync::barrier::smp_wmb` calls an out-of-line helper.  The device is not the
/// code under test, so both benchmarks' devices should cost the same.
#[inline(always)]
fn device_wmb() {
    #[cfg(target_arch = "x86_64")]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    #[cfg(not(target_arch = "x86_64"))]
    kernel::sync::barrier::smp_wmb();
}
