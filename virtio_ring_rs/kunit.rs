// SPDX-License-Identifier: GPL-2.0

//! KUnit suites of the ring: the real [`Queue`] against a device simulated in memory.
//!
//! Each test creates a queue through [`Queue::new`] exactly as the transport does, over ring
//! memory it allocated itself (its CPU address doubles as the "DMA" address: nothing here does
//! DMA), and plays the device through a second [`DmaMem`] view of that memory: it reads the
//! avail ring and the descriptors, and writes the used ring, its flags and `avail_event`.
//! The notification, interrupt callback and indirect-table allocator are test functions that
//! count their calls in a [`Ctx`].
//!
//! Two suites: `virtio_ring_rs_queue` (the protocol with a well-behaved device) and
//! `virtio_ring_rs_hostile` (a device that lies; each case must break the queue, hand out no
//! token twice, and still give every outstanding token back at teardown; but for a used
//! length beyond the buffer, which is clamped and counted).
//!
//! Compiled only into the test flavour of the module (`--cfg virtio_rs_kunit`).
//!
//! Holds `unsafe`: the tests play the device over raw ring memory, implement the ring's `extern
//! "C"` callbacks and call the queue's serialized methods.

use crate::{
    abi::{
        AbiHeader,
        IndirectAllocFn,
        IndirectFreeFn,
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
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
};

/// Feature bit mask of `VIRTIO_RING_F_EVENT_IDX`.
const EVENT_IDX: u64 = 1 << split::VIRTIO_RING_F_EVENT_IDX;
/// Feature bit mask of `VIRTIO_RING_F_INDIRECT_DESC`.
const INDIRECT: u64 = 1 << split::VIRTIO_RING_F_INDIRECT_DESC;
/// The queue index the tests give their queues (checked in the notification).
const QUEUE_INDEX: u16 = 3;

/// The `n`th test token: opaque, non-zero, never dereferenced.
const fn token(n: usize) -> usize {
    0x1000 + n * 8
}

/// A fake device address for buffer `n`; nothing ever accesses it.
const fn addr(n: u64) -> u64 {
    0x10_0000 + n * 0x1000
}

/// What the queue's callbacks record, shared with the test through their context pointer.
struct Ctx {
    notifies: Atomic<u32>,
    notify_index: Atomic<u32>,
    /// What the notification returns (false: the device is gone).
    notify_ok: Atomic<bool>,
    callbacks: Atomic<u32>,
    alloc_calls: Atomic<u32>,
    allocs: Atomic<u32>,
    frees: Atomic<u32>,
    /// Frees of a table that does not look like one of ours.
    bad_frees: Atomic<u32>,
    /// Makes the indirect-table allocator fail.
    fail_alloc: Atomic<bool>,
}

impl Ctx {
    fn new() -> Self {
        Self {
            notifies: Atomic::new(0),
            notify_index: Atomic::new(0),
            notify_ok: Atomic::new(true),
            callbacks: Atomic::new(0),
            alloc_calls: Atomic::new(0),
            allocs: Atomic::new(0),
            frees: Atomic::new(0),
            bad_frees: Atomic::new(0),
            fail_alloc: Atomic::new(false),
        }
    }
}

/// Reads a counter of a [`Ctx`].
fn load(a: &Atomic<u32>) -> u32 {
    a.load(Relaxed)
}

/// The test's notification: counts, records the queue index, answers `notify_ok`.
///
/// # Safety
///
/// `ctx` must point to a live [`Ctx`].
unsafe extern "C" fn notify(ctx: *const c_void, index: u16) -> bool {
    // SAFETY: The queues of these suites get a live `Ctx` as context (caller's guarantee).
    let ctx = unsafe { &*ctx.cast::<Ctx>() };
    ctx.notifies.add(1u32, Relaxed);
    ctx.notify_index.store(index.into(), Relaxed);
    ctx.notify_ok.load(Relaxed)
}

/// The test's driver callback: counts.
///
/// # Safety
///
/// `ctx` must point to a live [`Ctx`].
unsafe extern "C" fn callback(ctx: *const c_void) {
    // SAFETY: As in `notify`.
    let ctx = unsafe { &*ctx.cast::<Ctx>() };
    ctx.callbacks.add(1u32, Relaxed);
}

/// The test's indirect-table allocator: a zeroed `KVec<u64>` (8-byte aligned) whose CPU
/// address is also its "DMA" address.
///
/// # Safety
///
/// `ctx` must point to a live [`Ctx`] and `dma` be valid for a write.
unsafe extern "C" fn indirect_alloc(
    ctx: *const c_void,
    bytes: usize,
    atomic: bool,
    dma: *mut u64,
) -> *mut c_void {
    // SAFETY: As in `notify`.
    let ctx = unsafe { &*ctx.cast::<Ctx>() };
    ctx.alloc_calls.add(1u32, Relaxed);
    let words = bytes.div_ceil(8);
    if ctx.fail_alloc.load(Relaxed) || words == 0 {
        return core::ptr::null_mut();
    }
    let flags = if atomic { GFP_ATOMIC } else { GFP_KERNEL };
    let Ok(table) = KVec::<u64>::from_elem(0, words, flags) else {
        return core::ptr::null_mut();
    };
    let (ptr, len, cap) = table.into_raw_parts();
    if len != cap {
        // `indirect_free` rebuilds the vector from `bytes` alone, so it needs `len == cap`.
        // SAFETY: The parts were just taken from a `KVec<u64>`.
        drop(unsafe { KVec::from_raw_parts(ptr, len, cap) });
        return core::ptr::null_mut();
    }
    // SAFETY: The caller passes a valid out pointer.
    // CAST: the CPU address stands for the DMA address; nothing does DMA.
    unsafe { dma.write(ptr as u64) };
    ctx.allocs.add(1u32, Relaxed);
    ptr.cast()
}

/// The test's indirect-table free: checks that the table is one of ours and releases it.
///
/// # Safety
///
/// `ctx` must point to a live [`Ctx`]; `cpu`, `dma` and `bytes` must describe a table from
/// [`indirect_alloc`] that is freed only once.
unsafe extern "C" fn indirect_free(ctx: *const c_void, cpu: *mut c_void, dma: u64, bytes: usize) {
    // SAFETY: As in `notify`.
    let ctx = unsafe { &*ctx.cast::<Ctx>() };
    let words = bytes.div_ceil(8);
    // CAST: our allocator makes the DMA address the CPU address.
    if cpu.is_null() || dma != cpu as u64 || words == 0 {
        ctx.bad_frees.add(1u32, Relaxed);
        return;
    }
    // SAFETY: `indirect_alloc` made this table from a `KVec<u64>` of `words` elements and
    // capacity (it checked `len == cap`); it is freed once (caller's guarantee).
    drop(unsafe { KVec::from_raw_parts(cpu.cast::<u64>(), words, words) });
    ctx.frees.add(1u32, Relaxed);
}

/// Checks a property inside a helper (where the KUnit `assert!` is not in scope): logs what
/// failed and returns `EINVAL`, which fails the calling test through `?`.
fn ensure(cond: bool, what: &str) -> Result {
    if cond {
        Ok(())
    } else {
        pr_err!("check failed: {}\n", what);
        Err(EINVAL)
    }
}

/// Whether `got` holds each token of `want` exactly once, and nothing else.
fn exactly_once(got: &[usize], want: &[usize]) -> bool {
    got.len() == want.len()
        && want
            .iter()
            .all(|w| got.iter().filter(|g| *g == w).count() == 1)
}

/// A descriptor as the device reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Reads the descriptor at byte offset `off` of `mem` (little-endian, legacy guest order).
fn read_desc<M: RingMem>(mem: &M, off: usize) -> Desc {
    Desc {
        addr: u64::from(mem.read_u32(off)) | (u64::from(mem.read_u32(off + 4)) << 32),
        len: mem.read_u32(off + 8),
        flags: mem.read_u16(off + 12),
        next: mem.read_u16(off + 14),
    }
}

/// Calls `f` on each descriptor of the chain starting at `i` in a table of `entries`
/// descriptors; fails on a link out of the table or a chain longer than the table.
fn walk_table<M: RingMem>(
    table: &M,
    mut i: u16,
    entries: usize,
    mut f: impl FnMut(Desc) -> Result,
) -> Result {
    for _ in 0..entries {
        let d = read_desc(table, usize::from(i) * split::DESC_SIZE);
        f(d)?;
        if d.flags & split::VRING_DESC_F_NEXT == 0 {
            return Ok(());
        }
        if usize::from(d.next) >= entries {
            return Err(EINVAL);
        }
        i = d.next;
    }
    Err(EINVAL)
}

/// Whether `d` describes `addr`/`len` with `flags` (the chain link is not compared).
fn desc_is(d: &Desc, addr: u64, len: u32, flags: u16) -> bool {
    d.addr == addr && d.len == len && d.flags == flags
}

/// The device side of a legacy split ring (virtio 1.x 2.7, legacy layout), over its own view
/// of the ring memory.
struct Device {
    mem: DmaMem,
    layout: Layout,
    /// The next avail index the device will take.
    next_avail: u16,
    /// The used index the device published last.
    used_idx: u16,
}

impl Device {
    fn num(&self) -> u16 {
        self.layout.num()
    }

    fn avail_ring(&self, slot: u16) -> usize {
        self.layout.avail_offset() + 4 + 2 * usize::from(slot)
    }

    fn used_elem(&self, slot: u16) -> usize {
        self.layout.used_offset() + 4 + 8 * usize::from(slot)
    }

    /// `avail->flags`.
    fn avail_flags(&self) -> u16 {
        self.mem.read_u16(self.layout.avail_offset())
    }

    /// `avail->idx`.
    fn avail_idx(&self) -> u16 {
        self.mem.read_u16(self.layout.avail_offset() + 2)
    }

    /// `used_event`, after the avail ring.
    fn used_event(&self) -> u16 {
        self.mem.read_u16(self.avail_ring(self.num()))
    }

    /// Writes `used->flags`.
    fn set_used_flags(&self, flags: u16) {
        self.mem.write_u16(self.layout.used_offset(), flags)
    }

    /// Writes `avail_event`, after the used ring.
    fn set_avail_event(&self, idx: u16) {
        self.mem.write_u16(self.used_elem(self.num()), idx)
    }

    /// Ring descriptor `i`.
    fn desc(&self, i: u16) -> Desc {
        read_desc(&self.mem, usize::from(i) * split::DESC_SIZE)
    }

    /// Takes the next head from the avail ring, if the driver made one available.
    fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx() {
            return None;
        }
        let head = self
            .mem
            .read_u16(self.avail_ring(self.next_avail & (self.num() - 1)));
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Takes `n` heads from the avail ring.
    fn pop_n(&mut self, n: usize) -> Result<KVec<u16>> {
        let mut heads = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            heads.push(self.pop().ok_or(ENOENT)?, GFP_KERNEL)?;
        }
        Ok(heads)
    }

    /// Calls `f` on each descriptor of the buffer at `head`, following an indirect table;
    /// fails on a chain that leaves its table or loops.
    ///
    /// Only for heads the device took and has not completed: their indirect table is live.
    fn walk(&self, head: u16, f: impl FnMut(Desc) -> Result) -> Result {
        let first = self.desc(head);
        if first.flags & split::VRING_DESC_F_INDIRECT == 0 {
            return walk_table(&self.mem, head, self.num().into(), f);
        }
        let bytes = usize::try_from(first.len)?;
        // CAST: the test allocator makes the DMA address the CPU address.
        let ptr = first.addr as *mut c_void;
        // SAFETY: The table of a buffer in flight is live memory from `indirect_alloc`
        // (8-byte aligned, `first.len` bytes long, checked by the indirect tests), and
        // nothing holds a reference to it.
        let table = unsafe { DmaMem::new(ptr, bytes)? };
        walk_table(&table, 0, bytes / split::DESC_SIZE, f)
    }

    /// The descriptors of the buffer at `head` (see [`Device::walk`]).
    fn descs(&self, head: u16) -> Result<KVec<Desc>> {
        let mut out = KVec::new();
        self.walk(head, |d| Ok(out.push(d, GFP_KERNEL)?))?;
        Ok(out)
    }

    /// Total length of the device-writable descriptors of the buffer at `head`.
    fn writable(&self, head: u16) -> Result<u32> {
        let mut len = 0u32;
        self.walk(head, |d| {
            if d.flags & split::VRING_DESC_F_WRITE != 0 {
                len = len.saturating_add(d.len);
            }
            Ok(())
        })?;
        Ok(len)
    }

    /// Writes used element `idx` (free-running) without publishing it.
    fn write_used(&self, idx: u16, id: u32, len: u32) {
        let off = self.used_elem(idx & (self.num() - 1));
        self.mem.write_u32(off, id);
        self.mem.write_u32(off + 4, len);
    }

    /// Publishes `used->idx`.
    fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.mem.write_u16(self.layout.used_offset() + 2, idx);
    }

    /// Appends a used element and publishes it (element, then index, as a device does).
    fn push_used(&mut self, id: u32, len: u32) {
        self.write_used(self.used_idx, id, len);
        self.set_used_idx(self.used_idx.wrapping_add(1));
    }

    /// Completes the buffer at `head` in full (its whole writable length).
    fn complete_head(&mut self, head: u16) -> Result<u32> {
        let len = self.writable(head)?;
        self.push_used(head.into(), len);
        Ok(len)
    }

    /// Takes the next available buffer and completes it in full.
    fn complete(&mut self) -> Result<(u16, u32)> {
        let head = self.pop().ok_or(ENOENT)?;
        Ok((head, self.complete_head(head)?))
    }
}

/// How to create a queue for a test.
#[derive(Clone, Copy)]
struct Setup {
    num: u32,
    features: u64,
    /// Pass the driver callback.
    callback: bool,
    /// Pass the indirect-table allocator.
    allocator: bool,
}

impl Setup {
    const fn new(num: u32) -> Self {
        Self {
            num,
            features: 0,
            callback: true,
            allocator: true,
        }
    }

    const fn features(self, features: u64) -> Self {
        Self { features, ..self }
    }

    const fn no_callback(self) -> Self {
        Self {
            callback: false,
            ..self
        }
    }

    const fn no_allocator(self) -> Self {
        Self {
            allocator: false,
            ..self
        }
    }

    /// The parameter block a transport would pass for `ring_len` bytes at `ring`.
    fn params(&self, ring: *mut c_void, ring_len: usize, ctx: &Ctx) -> VqParams {
        let ctx: *const c_void = core::ptr::from_ref(ctx).cast();
        let (alloc, free): (Option<IndirectAllocFn>, Option<IndirectFreeFn>) = if self.allocator {
            (Some(indirect_alloc), Some(indirect_free))
        } else {
            (None, None)
        };
        VqParams {
            header: AbiHeader::for_type::<VqParams>(),
            index: QUEUE_INDEX,
            _reserved: 0,
            num: self.num,
            features: self.features,
            ring,
            // CAST: the CPU address stands for the DMA address; nothing does DMA.
            ring_dma: ring as u64,
            ring_len,
            notify: Some(notify),
            notify_ctx: ctx,
            callback: if self.callback { Some(callback) } else { None },
            callback_ctx: ctx,
            indirect_alloc: alloc,
            indirect_free: free,
            indirect_ctx: ctx,
        }
    }

    /// Allocates the ring and the context and creates the queue.
    fn build(self) -> Result<Rig> {
        let layout = Layout::new(self.num, split::VRING_ALIGN).map_err(|_| EINVAL)?;
        let ctx = KBox::new(Ctx::new(), GFP_KERNEL)?;
        // Garbage first: `Queue::new` must initialise the whole ring.  (From vmalloc when
        // large: nothing does DMA here.)
        let mut ring = KVVec::from_elem(!0u64, layout.size().div_ceil(8), GFP_KERNEL)?;
        let len = ring.len() * 8;
        let ptr = ring.as_mut_ptr().cast::<c_void>();
        let params = self.params(ptr, len, &ctx);
        // SAFETY: The ring memory and the context are owned by the returned `Rig`, which drops
        // the queue before them; the callbacks only touch the context's atomics.
        let vq = unsafe { Queue::new(&params)? };
        // SAFETY: `ptr` is valid for `len` bytes until the `Rig` frees `ring` (after the device
        // view, declared before it); it is 8-byte aligned (`KVec<u64>`) and never referenced.
        let mem = unsafe { DmaMem::new(ptr, len)? };
        Ok(Rig {
            vq,
            dev: Device {
                mem,
                layout,
                next_avail: 0,
                used_idx: 0,
            },
            num: layout.num().into(),
            _ring: ring,
            ctx,
        })
    }
}

/// A queue under test, its simulated device, and what they live on.
///
/// Fields drop in declaration order: the queue and the device view go before the ring memory
/// and the context they use.
struct Rig {
    vq: Queue,
    dev: Device,
    num: u32,
    /// The ring memory, only kept to be freed last; no reference into it is ever made.
    _ring: KVVec<u64>,
    ctx: KBox<Ctx>,
}

// The serialized calls of the queue.  SAFETY (for each of them): a test is the only user of
// its queue and runs on one thread, so its calls are serialized as the locking contract asks.
impl Rig {
    /// Adds `out` readable then `inp` writable elements (at most 16) with `token`.
    fn add(&self, out: &[Sg], inp: &[Sg], token: usize) -> Result {
        // Gathered on the stack: no allocation in the long loops.
        let mut buf = [Sg::new(0, 0); 16];
        let sg = buf.get_mut(..out.len() + inp.len()).ok_or(E2BIG)?;
        for (d, s) in sg.iter_mut().zip(Iterator::chain(out.iter(), inp)) {
            *d = *s;
        }
        // CAST: tokens are opaque values the queue hands back, never dereferenced.
        let token = NonNull::new(token as *mut c_void).ok_or(EINVAL)?;
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.add(sg, out.len(), token, false) }
    }

    /// Adds one writable element of `len` bytes.
    fn add_in(&self, len: u32, token: usize) -> Result {
        self.add(&[], &[Sg::new(addr(1), len)], token)
    }

    fn kick_prepare(&self) -> bool {
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.kick_prepare() }
    }

    /// The next used buffer: token and written length.
    fn get_buf(&self) -> Option<(usize, u32)> {
        let mut len = 0;
        // SAFETY: Serialized call (see above).
        let token = unsafe { self.vq.get_buf(&mut len) };
        // CAST: tokens are the values `add` received.
        (!token.is_null()).then_some((token as usize, len))
    }

    fn disable_cb(&self) {
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.disable_cb() }
    }

    fn enable_cb(&self) -> bool {
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.enable_cb(false) }
    }

    fn enable_cb_delayed(&self) -> bool {
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.enable_cb(true) }
    }

    fn num_free(&self) -> u32 {
        // SAFETY: Serialized call (see above).
        unsafe { self.vq.num_free() }
    }

    /// Detaches until the queue has nothing left; fails if it returns more than it can hold.
    fn detach_all(&self) -> Result<KVec<usize>> {
        let mut got = KVec::new();
        loop {
            // SAFETY: Serialized call (see above).
            let token = unsafe { self.vq.detach_unused() };
            if token.is_null() {
                return Ok(got);
            }
            if got.len() >= usize::try_from(self.num)? {
                return Err(EINVAL);
            }
            // CAST: as in `get_buf`.
            got.push(token as usize, GFP_KERNEL)?;
        }
    }

    /// Checks what a queue must end in after a device violation or a transport break: it is
    /// broken, hands out and accepts nothing, asks for no notification, runs no callback,
    /// and teardown returns exactly the `outstanding` tokens, once each, and every table.
    fn ensure_broken_and_drained(&self, outstanding: &[usize]) -> Result {
        ensure(self.vq.is_broken(), "the queue is broken")?;
        ensure(self.get_buf().is_none(), "a broken queue hands out nothing")?;
        ensure(
            self.add_in(64, token(999)) == Err(EIO),
            "a broken queue refuses buffers with EIO",
        )?;
        ensure(!self.kick_prepare(), "a broken queue wants no notification")?;
        let notifies = load(&self.ctx.notifies);
        ensure(
            !self.vq.notify() && load(&self.ctx.notifies) == notifies,
            "a broken queue does not notify",
        )?;
        let callbacks = load(&self.ctx.callbacks);
        let _ = self.vq.interrupt();
        ensure(
            load(&self.ctx.callbacks) == callbacks,
            "a broken queue runs no callback",
        )?;
        let got = self.detach_all()?;
        ensure(
            exactly_once(&got, outstanding),
            "detach returns every outstanding token exactly once",
        )?;
        ensure(
            self.num_free() == self.num,
            "every descriptor is free again",
        )?;
        ensure(
            load(&self.ctx.allocs) == load(&self.ctx.frees) && load(&self.ctx.bad_frees) == 0,
            "every indirect table was freed once",
        )
    }
}

#[kunit_tests(virtio_ring_rs_queue)]
mod queue_tests {
    use super::*;

    #[test]
    fn new_refuses_bad_sizes() -> Result {
        let ctx = Ctx::new();
        let size = Layout::new(8, split::VRING_ALIGN)
            .map_err(|_| EINVAL)?
            .size();
        let mut ring = KVec::from_elem(!0u64, size.div_ceil(8) + 1, GFP_KERNEL)?;
        let ptr = ring.as_mut_ptr().cast::<c_void>();
        let len = ring.len() * 8;
        let try_new = |p: &VqParams| {
            // SAFETY: `ring` and `ctx` outlive the queue, which is dropped right here.
            unsafe { Queue::new(p) }.err()
        };

        for num in [0, 3, 100, 65536, u32::MAX] {
            let p = Setup::new(num).params(ptr, len, &ctx);
            assert_eq!(try_new(&p), Some(EINVAL));
        }
        // Memory one byte short of the layout, sized for a smaller queue, or absent.
        assert_eq!(
            try_new(&Setup::new(8).params(ptr, size - 1, &ctx)),
            Some(EINVAL)
        );
        assert_eq!(
            try_new(&Setup::new(16).params(ptr, len, &ctx)),
            Some(EINVAL)
        );
        let null = core::ptr::null_mut();
        assert_eq!(
            try_new(&Setup::new(8).params(null, len, &ctx)),
            Some(EINVAL)
        );
        // Not 8-byte aligned.
        let odd = ptr.cast::<u8>().wrapping_add(4).cast::<c_void>();
        assert_eq!(
            try_new(&Setup::new(8).params(odd, len - 4, &ctx)),
            Some(EINVAL)
        );
        // No notification.
        let mut p = Setup::new(8).params(ptr, len, &ctx);
        p.notify = None;
        assert_eq!(try_new(&p), Some(EINVAL));
        // A parameter block from another contract version.
        let mut p = Setup::new(8).params(ptr, len, &ctx);
        p.header.version += 1;
        let eproto = -i32::try_from(kernel::bindings::EPROTO)?;
        assert_eq!(try_new(&p).map(|e| e.to_errno()), Some(eproto));

        // The smallest and a typical size work, and the ring starts initialised.
        for num in [1, 8] {
            let p = Setup::new(num).params(ptr, len, &ctx);
            // SAFETY: `ring` and `ctx` outlive the queue, dropped at the end of the iteration.
            let vq = unsafe { Queue::new(&p)? };
            // SAFETY: As in `Setup::build`; `vq` only uses the memory through its own view.
            let mem = unsafe { DmaMem::new(ptr, len)? };
            let layout = Layout::new(num, split::VRING_ALIGN).map_err(|_| EINVAL)?;
            assert_eq!(mem.read_u16(layout.avail_offset() + 2), 0);
            assert_eq!(mem.read_u16(layout.used_offset() + 2), 0);
            // SAFETY: The only user of `vq`, on one thread.
            assert_eq!(unsafe { vq.num_free() }, num);
        }
        Ok(())
    }

    #[test]
    fn add_get_round_trip() -> Result {
        let mut rig = Setup::new(8).build()?;
        rig.add(&[Sg::new(addr(0), 16)], &[Sg::new(addr(1), 512)], token(0))?;
        rig.add(&[], &[Sg::new(addr(2), 4096)], token(1))?;
        rig.add(&[Sg::new(addr(3), 8), Sg::new(addr(4), 24)], &[], token(2))?;
        assert_eq!(rig.num_free(), 3);
        assert_eq!(rig.dev.avail_idx(), 3);

        let heads = rig.dev.pop_n(3)?;
        let (h0, h1, h2) = (heads[0], heads[1], heads[2]);
        let c = rig.dev.descs(h0)?;
        assert_eq!(c.len(), 2);
        assert!(desc_is(&c[0], addr(0), 16, split::VRING_DESC_F_NEXT));
        assert!(desc_is(&c[1], addr(1), 512, split::VRING_DESC_F_WRITE));
        let c = rig.dev.descs(h1)?;
        assert_eq!(c.len(), 1);
        assert!(desc_is(&c[0], addr(2), 4096, split::VRING_DESC_F_WRITE));
        let c = rig.dev.descs(h2)?;
        assert_eq!(c.len(), 2);
        assert!(desc_is(&c[0], addr(3), 8, split::VRING_DESC_F_NEXT));
        assert!(desc_is(&c[1], addr(4), 24, 0));

        // Out of order, partial and full lengths.
        rig.dev.push_used(h1.into(), 100);
        rig.dev.push_used(h2.into(), 0);
        rig.dev.push_used(h0.into(), 512);
        assert_eq!(rig.get_buf(), Some((token(1), 100)));
        assert_eq!(rig.get_buf(), Some((token(2), 0)));
        assert_eq!(rig.get_buf(), Some((token(0), 512)));
        assert_eq!(rig.get_buf(), None);
        assert_eq!(rig.num_free(), 8);

        // Six elements: more than the queue converts on the stack, so its allocating path.
        let sg = [10, 11, 12, 13, 14, 15].map(|len: u32| Sg::new(addr(len.into()), len));
        rig.add(&sg[..2], &sg[2..], token(5))?;
        assert_eq!(rig.num_free(), 2);
        let h = rig.dev.pop().ok_or(ENOENT)?;
        let c = rig.dev.descs(h)?;
        assert_eq!(c.len(), 6);
        for (i, (d, s)) in c.iter().zip(sg.iter()).enumerate() {
            let write = if i < 2 { 0 } else { split::VRING_DESC_F_WRITE };
            let next = if i < 5 { split::VRING_DESC_F_NEXT } else { 0 };
            assert!(desc_is(d, s.addr, s.len, write | next));
        }
        assert_eq!(rig.dev.complete_head(h)?, 12 + 13 + 14 + 15);
        assert_eq!(rig.get_buf(), Some((token(5), 54)));
        assert_eq!(rig.num_free(), 8);

        // The descriptors are reused: a full ring, then everything back in order.
        for (i, len) in (64..72).enumerate() {
            rig.add_in(len, token(10 + i))?;
        }
        assert_eq!(rig.num_free(), 0);
        assert_eq!(rig.add_in(64, token(99)), Err(ENOSPC));
        for len in 64..72 {
            assert_eq!(rig.dev.complete()?.1, len);
        }
        for (i, len) in (64..72).enumerate() {
            assert_eq!(rig.get_buf(), Some((token(10 + i), len)));
        }
        assert_eq!(rig.get_buf(), None);
        assert_eq!(rig.num_free(), 8);
        assert!(!rig.vq.is_broken());
        assert_eq!(rig.detach_all()?.len(), 0);
        Ok(())
    }

    #[test]
    fn bad_buffers_are_refused() -> Result {
        let rig = Setup::new(4).build()?;
        let sg = [Sg::new(addr(0), 8); 5];
        assert_eq!(rig.add(&[], &[], token(0)), Err(EINVAL));
        assert_eq!(rig.add(&sg[..2], &sg[..3], token(0)), Err(EINVAL));
        rig.add(&sg[..1], &sg[..1], token(1))?;
        rig.add(&sg[..1], &sg[..1], token(2))?;
        assert_eq!(rig.num_free(), 0);
        assert_eq!(rig.add_in(8, token(3)), Err(ENOSPC));
        assert_eq!(rig.dev.avail_idx(), 2);
        assert!(!rig.vq.is_broken());
        let got = rig.detach_all()?;
        assert!(exactly_once(&got, &[token(1), token(2)]));
        Ok(())
    }

    #[test]
    fn index_wraps_around_16_bits() -> Result {
        // More cycles than the 16-bit indexes can count, three buffers always in flight, so
        // that the avail, used and event indexes all cross 65535 -> 0 with work pending.
        const CYCLES: usize = 70_000;
        const WINDOW: usize = 3;
        // CAST: below 1000.
        let len_of = |n: usize| 1 + (n % 1000) as u32;
        let mut rig = Setup::new(4).features(EVENT_IDX).build()?;
        for n in 0..WINDOW {
            rig.add_in(len_of(n), token(n % 4096))?;
        }
        for n in 0..CYCLES {
            let (_, len) = rig.dev.complete()?;
            assert_eq!(len, len_of(n));
            // The device saw everything so far and asks to hear of the next buffer.
            rig.dev.set_avail_event(rig.dev.avail_idx());
            assert_eq!(rig.get_buf(), Some((token(n % 4096), len_of(n))));
            let m = n + WINDOW;
            rig.add_in(len_of(m), token(m % 4096))?;
            assert!(rig.kick_prepare());
            assert!(rig.vq.notify());
        }
        // CAST: the free-running indexes are the counts modulo 2^16.
        let wrapped = |n: usize| (n % 65536) as u16;
        assert_eq!(rig.dev.avail_idx(), wrapped(CYCLES + WINDOW));
        assert_eq!(rig.dev.used_event(), wrapped(CYCLES));
        assert_eq!(usize::try_from(load(&rig.ctx.notifies))?, CYCLES);
        assert_eq!(rig.num_free(), 1);
        for n in CYCLES..CYCLES + WINDOW {
            rig.dev.complete()?;
            assert_eq!(rig.get_buf(), Some((token(n % 4096), len_of(n))));
        }
        assert_eq!(rig.get_buf(), None);
        assert_eq!(rig.num_free(), 4);
        assert!(!rig.vq.is_broken());
        Ok(())
    }

    #[test]
    fn indirect_table_used_and_freed() -> Result {
        let mut rig = Setup::new(8).features(INDIRECT).build()?;
        let out = [Sg::new(addr(0), 16)];
        let inp = [Sg::new(addr(1), 100), Sg::new(addr(2), 200)];
        rig.add(&out, &inp, token(0))?;
        assert_eq!(load(&rig.ctx.allocs), 1);
        assert_eq!(rig.num_free(), 7);
        let h0 = rig.dev.pop().ok_or(ENOENT)?;
        let d = rig.dev.desc(h0);
        assert_eq!(d.flags, split::VRING_DESC_F_INDIRECT);
        assert_eq!(d.len, 3 * 16);
        assert!(d.addr % 8 == 0 && d.addr != 0);
        let c = rig.dev.descs(h0)?;
        assert_eq!(c.len(), 3);
        let (next, write) = (split::VRING_DESC_F_NEXT, split::VRING_DESC_F_WRITE);
        assert!(desc_is(&c[0], addr(0), 16, next) && c[0].next == 1);
        assert!(desc_is(&c[1], addr(1), 100, next | write) && c[1].next == 2);
        assert!(desc_is(&c[2], addr(2), 200, write));

        // One element never takes a table.
        rig.add_in(64, token(1))?;
        rig.add(&out, &[], token(2))?;
        assert_eq!(load(&rig.ctx.alloc_calls), 1);
        assert_eq!(rig.num_free(), 5);
        let heads = rig.dev.pop_n(2)?;
        assert_eq!(rig.dev.desc(heads[0]).flags, write);
        assert_eq!(rig.dev.desc(heads[1]).flags, 0);

        // Completion frees the table; the length is checked against the table's elements.
        rig.dev.complete_head(h0)?;
        assert_eq!(rig.get_buf(), Some((token(0), 300)));
        assert_eq!(load(&rig.ctx.frees), 1);
        rig.dev.complete_head(heads[0])?;
        rig.dev.complete_head(heads[1])?;
        assert_eq!(rig.get_buf(), Some((token(1), 64)));
        assert_eq!(rig.get_buf(), Some((token(2), 0)));
        assert_eq!(rig.num_free(), 8);

        // With a single free descriptor, a table still fits; with none, nothing is allocated.
        for i in 0..7 {
            rig.add_in(8, token(10 + i))?;
        }
        assert_eq!(rig.num_free(), 1);
        rig.add(&out, &inp, token(20))?;
        assert_eq!(rig.num_free(), 0);
        assert_eq!(load(&rig.ctx.allocs), 2);
        let calls = load(&rig.ctx.alloc_calls);
        assert_eq!(rig.add(&out, &inp, token(21)), Err(ENOSPC));
        assert_eq!(rig.add_in(8, token(22)), Err(ENOSPC));
        assert_eq!(load(&rig.ctx.alloc_calls), calls);

        for _ in 0..8 {
            rig.dev.complete()?;
        }
        for i in 0..7 {
            assert_eq!(rig.get_buf(), Some((token(10 + i), 8)));
        }
        assert_eq!(rig.get_buf(), Some((token(20), 300)));
        assert_eq!(load(&rig.ctx.frees), 2);
        assert_eq!(load(&rig.ctx.bad_frees), 0);
        assert_eq!(rig.num_free(), 8);
        Ok(())
    }

    #[test]
    fn indirect_tables_freed_on_detach() -> Result {
        let mut rig = Setup::new(8).features(INDIRECT).build()?;
        let sg = [Sg::new(addr(0), 32); 3];
        for i in 0..4 {
            rig.add(&sg[..1], &sg[..2], token(i))?;
        }
        rig.add_in(16, token(4))?;
        assert_eq!(load(&rig.ctx.allocs), 4);
        assert_eq!(rig.num_free(), 3);
        rig.dev.complete()?;
        rig.dev.pop().ok_or(ENOENT)?;
        assert_eq!(rig.get_buf(), Some((token(0), 64)));
        assert_eq!(load(&rig.ctx.frees), 1);

        let got = rig.detach_all()?;
        assert!(exactly_once(
            &got,
            &[token(1), token(2), token(3), token(4)]
        ));
        assert_eq!(load(&rig.ctx.frees), 4);
        assert_eq!(load(&rig.ctx.bad_frees), 0);
        assert_eq!(rig.num_free(), 8);
        Ok(())
    }

    #[test]
    fn queue_drop_frees_indirect_tables() -> Result {
        let rig = Setup::new(8).features(INDIRECT).build()?;
        let sg = [Sg::new(addr(0), 32); 2];
        rig.add(&sg[..1], &sg[..1], token(0))?;
        rig.add(&sg[..1], &sg[..1], token(1))?;
        assert_eq!(load(&rig.ctx.allocs), 2);
        // A driver that forgot to detach: dropping the queue still gives the tables back
        // (and logs a warning).
        let Rig { vq, ctx, .. } = rig;
        drop(vq);
        assert_eq!(load(&ctx.frees), 2);
        assert_eq!(load(&ctx.bad_frees), 0);
        Ok(())
    }

    #[test]
    fn indirect_falls_back_to_direct() -> Result {
        let (next, write) = (split::VRING_DESC_F_NEXT, split::VRING_DESC_F_WRITE);
        let out = [Sg::new(addr(0), 16)];
        let inp = [Sg::new(addr(1), 100), Sg::new(addr(2), 200)];

        // The allocator fails: a direct chain.
        let mut rig = Setup::new(8).features(INDIRECT).build()?;
        rig.ctx.fail_alloc.store(true, Relaxed);
        rig.add(&out, &inp, token(0))?;
        assert_eq!(load(&rig.ctx.alloc_calls), 1);
        assert_eq!(load(&rig.ctx.allocs), 0);
        assert_eq!(rig.num_free(), 5);
        let h = rig.dev.pop().ok_or(ENOENT)?;
        let c = rig.dev.descs(h)?;
        assert_eq!(c.len(), 3);
        assert!(desc_is(&c[0], addr(0), 16, next));
        assert!(desc_is(&c[1], addr(1), 100, next | write));
        assert!(desc_is(&c[2], addr(2), 200, write));
        rig.dev.complete_head(h)?;
        assert_eq!(rig.get_buf(), Some((token(0), 300)));
        // ... and a direct chain that does not fit fails cleanly.
        for i in 0..6 {
            rig.add_in(8, token(1 + i))?;
        }
        assert_eq!(rig.num_free(), 2);
        assert_eq!(rig.add(&out, &inp, token(9)), Err(ENOSPC));
        assert_eq!(load(&rig.ctx.alloc_calls), 2);
        assert_eq!(load(&rig.ctx.frees), 0);
        assert_eq!(rig.detach_all()?.len(), 6);

        // Not negotiated, or no allocator: never asks for a table.
        for setup in [
            Setup::new(8),
            Setup::new(8).features(INDIRECT).no_allocator(),
        ] {
            let mut rig = setup.build()?;
            rig.add(&out, &inp, token(0))?;
            assert_eq!(load(&rig.ctx.alloc_calls), 0);
            assert_eq!(rig.num_free(), 5);
            let h = rig.dev.pop().ok_or(ENOENT)?;
            assert_eq!(rig.dev.desc(h).flags, next);
            assert_eq!(rig.dev.descs(h)?.len(), 3);
            assert_eq!(rig.detach_all()?.len(), 1);
        }

        // More elements than the queue size: refused either way, nothing allocated.
        let rig = Setup::new(4).features(INDIRECT).build()?;
        let sg = [Sg::new(addr(0), 8); 5];
        assert_eq!(rig.add(&sg, &[], token(0)), Err(EINVAL));
        assert_eq!(load(&rig.ctx.alloc_calls), 0);
        Ok(())
    }

    #[test]
    fn notify_without_event_idx() -> Result {
        let rig = Setup::new(8).build()?;
        rig.add_in(64, token(0))?;
        assert!(rig.kick_prepare());
        assert!(rig.vq.notify());
        assert_eq!(load(&rig.ctx.notifies), 1);
        assert_eq!(rig.ctx.notify_index.load(Relaxed), u32::from(QUEUE_INDEX));

        // The device asks not to be notified.
        rig.dev.set_used_flags(split::VRING_USED_F_NO_NOTIFY);
        rig.add_in(64, token(1))?;
        assert!(!rig.kick_prepare());
        // A stale avail_event means nothing without EVENT_IDX.
        rig.dev.set_avail_event(100);
        rig.dev.set_used_flags(0);
        rig.add_in(64, token(2))?;
        rig.add_in(64, token(3))?;
        assert!(rig.kick_prepare());
        assert!(!rig.vq.is_broken());
        assert_eq!(rig.detach_all()?.len(), 4);
        Ok(())
    }

    #[test]
    fn notify_with_event_idx() -> Result {
        let rig = Setup::new(16).features(EVENT_IDX).build()?;
        // avail_event starts at 0: the first buffer (index 0) is wanted.
        rig.add_in(64, token(0))?;
        assert!(rig.kick_prepare());
        // The device wants to hear when index 3 is published.
        rig.dev.set_avail_event(3);
        rig.add_in(64, token(1))?;
        assert!(!rig.kick_prepare());
        rig.add_in(64, token(2))?;
        assert!(!rig.kick_prepare());
        rig.add_in(64, token(3))?;
        assert!(rig.kick_prepare());
        // A batch whose window [4, 7) covers the event.
        rig.dev.set_avail_event(5);
        for i in 4..7 {
            rig.add_in(64, token(i))?;
        }
        assert!(rig.kick_prepare());
        // An event already behind the new buffers.
        rig.dev.set_avail_event(2);
        rig.add_in(64, token(7))?;
        assert!(!rig.kick_prepare());
        // VRING_USED_F_NO_NOTIFY is not used with EVENT_IDX.
        rig.dev.set_used_flags(split::VRING_USED_F_NO_NOTIFY);
        rig.dev.set_avail_event(8);
        rig.add_in(64, token(8))?;
        assert!(rig.kick_prepare());
        // Nothing added since the last call: nothing to notify.
        assert!(!rig.kick_prepare());
        assert_eq!(load(&rig.ctx.notifies), 0);
        assert_eq!(rig.detach_all()?.len(), 9);
        Ok(())
    }

    #[test]
    fn callbacks_without_event_idx() -> Result {
        let no_interrupt = split::VRING_AVAIL_F_NO_INTERRUPT;
        let mut rig = Setup::new(8).build()?;
        assert_eq!(rig.dev.avail_flags(), 0);
        rig.disable_cb();
        assert_eq!(rig.dev.avail_flags(), no_interrupt);
        assert!(rig.enable_cb());
        assert_eq!(rig.dev.avail_flags(), 0);

        rig.add_in(64, token(0))?;
        rig.add_in(64, token(1))?;
        rig.disable_cb();
        rig.dev.complete()?;
        // A buffer was used while callbacks were off: enabling says so.
        assert!(!rig.enable_cb());
        assert_eq!(rig.dev.avail_flags(), 0);
        assert_eq!(rig.get_buf(), Some((token(0), 64)));
        assert!(rig.enable_cb());
        rig.dev.complete()?;
        assert!(!rig.enable_cb_delayed());
        assert_eq!(rig.get_buf(), Some((token(1), 64)));
        assert!(rig.enable_cb_delayed());
        assert_eq!(rig.dev.avail_flags(), 0);
        Ok(())
    }

    #[test]
    fn callbacks_with_event_idx() -> Result {
        let mut rig = Setup::new(16).features(EVENT_IDX).build()?;
        assert_eq!(rig.dev.used_event(), 0);
        for i in 0..8 {
            rig.add_in(64, token(i))?;
        }
        // Disabled: used_event is put where the device cannot reach it; the flags are unused.
        rig.disable_cb();
        assert_eq!(rig.dev.used_event(), 0xffff);
        assert_eq!(rig.dev.avail_flags(), 0);
        rig.dev.complete()?;
        assert_eq!(rig.get_buf(), Some((token(0), 64)));
        assert_eq!(rig.dev.used_event(), 0xffff);
        // Enabled: interrupt for the next used buffer.
        assert!(rig.enable_cb());
        assert_eq!(rig.dev.used_event(), 1);
        rig.dev.complete()?;
        assert!(!rig.enable_cb());
        // get_buf with callbacks on moves used_event along.
        assert_eq!(rig.get_buf(), Some((token(1), 64)));
        assert_eq!(rig.dev.used_event(), 2);

        // Delayed: 6 in flight, interrupt after three quarters of them (index 2 + 4).
        assert!(rig.enable_cb_delayed());
        assert_eq!(rig.dev.used_event(), 6);
        for _ in 0..4 {
            rig.dev.complete()?;
        }
        assert!(rig.enable_cb_delayed());
        rig.dev.complete()?;
        assert!(!rig.enable_cb_delayed());
        for i in 2..7 {
            assert_eq!(rig.get_buf(), Some((token(i), 64)));
        }
        assert_eq!(rig.get_buf(), None);
        assert!(rig.enable_cb());
        assert_eq!(rig.dev.used_event(), 7);
        assert_eq!(rig.detach_all()?.len(), 1);
        Ok(())
    }

    #[test]
    fn interrupt_runs_callback() -> Result {
        let mut rig = Setup::new(8).build()?;
        assert!(!rig.vq.interrupt());
        rig.add_in(64, token(0))?;
        assert!(!rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 0);
        rig.dev.complete()?;
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 1);
        // Still pending until the driver takes it.
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 2);
        assert_eq!(rig.get_buf(), Some((token(0), 64)));
        assert!(!rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 2);

        // Without a driver callback the queue still reports the work.
        let mut rig = Setup::new(8).no_callback().build()?;
        rig.add_in(64, token(0))?;
        rig.dev.complete()?;
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 0);
        assert_eq!(rig.get_buf(), Some((token(0), 64)));
        assert!(!rig.vq.interrupt());
        Ok(())
    }

    #[test]
    fn detach_returns_every_token_once() -> Result {
        let mut rig = Setup::new(16).features(INDIRECT).build()?;
        let sg = [Sg::new(addr(0), 32); 3];
        for i in 0..10 {
            let n = 1 + i % 3;
            rig.add(&sg[..1], &sg[1..n], token(i))?;
        }
        // The device took six, completed three; the driver took two of those.
        let heads = rig.dev.pop_n(6)?;
        rig.dev.complete_head(heads[4])?;
        rig.dev.complete_head(heads[1])?;
        rig.dev.complete_head(heads[2])?;
        assert_eq!(rig.get_buf(), Some((token(4), 32)));
        assert_eq!(rig.get_buf(), Some((token(1), 32)));

        // Teardown after a reset: everything else comes back, the used one included.
        let got = rig.detach_all()?;
        let want = [0, 2, 3, 5, 6, 7, 8, 9].map(token);
        assert!(exactly_once(&got, &want));
        assert_eq!(rig.num_free(), 16);
        assert_eq!(rig.dev.avail_idx(), 2);
        assert_eq!(load(&rig.ctx.allocs), load(&rig.ctx.frees));
        assert_eq!(load(&rig.ctx.bad_frees), 0);
        assert_eq!(rig.detach_all()?.len(), 0);
        assert!(!rig.vq.is_broken());
        Ok(())
    }

    #[test]
    fn largest_queue_works() -> Result {
        // 32768 entries: the per-descriptor state alone is over a megabyte (kvmalloc).
        let mut rig = Setup::new(32768).features(EVENT_IDX).build()?;
        assert_eq!(rig.num_free(), 32768);
        for i in 0..64 {
            rig.add_in(64, token(i))?;
        }
        for _ in 0..64 {
            rig.dev.complete()?;
        }
        for i in 0..64 {
            assert_eq!(rig.get_buf(), Some((token(i), 64)));
        }
        assert_eq!(rig.num_free(), 32768);
        assert!(!rig.vq.is_broken());
        Ok(())
    }
}

#[kunit_tests(virtio_ring_rs_hostile)]
mod hostile_tests {
    use super::*;

    /// A queue of 8 with three buffers the device took: `token(0)` (16 readable + 100
    /// writable bytes), `token(1)` (50 writable), `token(2)` (32 readable); returns the heads.
    fn three_in_flight(setup: Setup) -> Result<(Rig, KVec<u16>)> {
        let mut rig = setup.build()?;
        rig.add(&[Sg::new(addr(0), 16)], &[Sg::new(addr(1), 100)], token(0))?;
        rig.add_in(50, token(1))?;
        rig.add(&[Sg::new(addr(2), 32)], &[], token(2))?;
        let heads = rig.dev.pop_n(3)?;
        Ok((rig, heads))
    }

    const ALL: [usize; 3] = [token(0), token(1), token(2)];

    #[test]
    fn used_id_out_of_range() -> Result {
        for bad in [8, 0x1_0000, u32::MAX] {
            let (mut rig, heads) = three_in_flight(Setup::new(8))?;
            // 0x1_0000 + head would alias a real head if truncated to 16 bits.
            let id = if bad == 0x1_0000 {
                bad + u32::from(heads[0])
            } else {
                bad
            };
            rig.dev.push_used(id, 0);
            assert_eq!(rig.get_buf(), None);
            assert!(rig.vq.is_broken());
            rig.ensure_broken_and_drained(&ALL)?;
        }
        Ok(())
    }

    #[test]
    fn used_id_not_a_head() -> Result {
        // A free descriptor.
        let (mut rig, _) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(7, 0);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&ALL)?;

        // The second descriptor of a chain.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        let member = rig.dev.desc(heads[0]).next;
        assert!(member != heads[0]);
        rig.dev.push_used(member.into(), 0);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&ALL)?;
        Ok(())
    }

    #[test]
    fn duplicate_completion() -> Result {
        // Completed again after the driver took it.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(heads[1].into(), 50);
        assert_eq!(rig.get_buf(), Some((token(1), 50)));
        rig.dev.push_used(heads[1].into(), 50);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&[token(0), token(2)])?;

        // Twice in one batch.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(heads[0].into(), 100);
        rig.dev.push_used(heads[0].into(), 100);
        assert_eq!(rig.get_buf(), Some((token(0), 100)));
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&[token(1), token(2)])?;
        Ok(())
    }

    #[test]
    fn used_len_too_long_is_clamped_and_counted() -> Result {
        // (buffer, length, writable): one past the writable part, on a read-only buffer, the
        // maximum.  Not a violation (Linux reverted making it one: devices report the
        // out-length too); the driver gets what the buffer can hold.
        for (i, len, max) in [(0, 101, 100), (2, 1, 0), (1, u32::MAX, 50)] {
            let (mut rig, heads) = three_in_flight(Setup::new(8))?;
            rig.dev.push_used(heads[i].into(), len);
            assert_eq!(rig.get_buf(), Some((token(i), max)));
            assert!(!rig.vq.is_broken());
            assert_eq!(rig.vq.clamped_lens(), 1);
            // The queue goes on; an honest length is not counted.
            rig.dev.complete_head(heads[(i + 1) % 3])?;
            assert!(rig.get_buf().is_some());
            assert_eq!(rig.vq.clamped_lens(), 1);
            rig.dev.push_used(heads[(i + 2) % 3].into(), u32::MAX);
            assert!(rig.get_buf().is_some());
            assert_eq!(rig.vq.clamped_lens(), 2);
            assert_eq!(rig.num_free(), 8);
        }
        // Through an indirect table: the limit is the table's writable length.
        let sg = [Sg::new(addr(0), 40); 3];
        let mut rig = Setup::new(8).features(INDIRECT).build()?;
        rig.add(&sg[..1], &sg[1..], token(0))?;
        let h = rig.dev.pop().ok_or(ENOENT)?;
        assert_eq!(rig.dev.writable(h)?, 80);
        rig.dev.push_used(h.into(), 81);
        assert_eq!(rig.get_buf(), Some((token(0), 80)));
        assert!(!rig.vq.is_broken());
        assert_eq!(rig.vq.clamped_lens(), 1);
        assert_eq!(load(&rig.ctx.allocs), load(&rig.ctx.frees));
        Ok(())
    }

    #[test]
    fn interrupt_checks_the_used_index() -> Result {
        // Ahead by more than in flight: seen by the interrupt entry, before any get_buf; the
        // interrupt was the queue's, but no callback runs for a lie.
        for idx in [4, 0xffff, 0x8000] {
            let (mut rig, _) = three_in_flight(Setup::new(8))?;
            rig.dev.set_used_idx(idx);
            assert!(rig.vq.interrupt());
            assert_eq!(load(&rig.ctx.callbacks), 0);
            assert!(rig.vq.is_broken());
            rig.ensure_broken_and_drained(&ALL)?;
        }
        // Exactly what is in flight is fine, and after a legitimate completion the bound is
        // what is still out.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(heads[0].into(), 100);
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 1);
        assert_eq!(rig.get_buf(), Some((token(0), 100)));
        rig.dev.push_used(heads[1].into(), 50);
        rig.dev.push_used(heads[2].into(), 0);
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 2);
        assert!(!rig.vq.is_broken());
        rig.dev.set_used_idx(4);
        assert!(rig.vq.interrupt());
        assert_eq!(load(&rig.ctx.callbacks), 2);
        assert!(rig.vq.is_broken());
        rig.ensure_broken_and_drained(&[token(1), token(2)])?;
        Ok(())
    }

    #[test]
    fn used_idx_jump() -> Result {
        // Ahead by more than in flight, behind (a huge wrapped distance), half the index space.
        for idx in [4, 0xffff, 0x8000] {
            let (mut rig, heads) = three_in_flight(Setup::new(8))?;
            for (n, h) in (0u16..).zip(heads.iter()) {
                rig.dev.write_used(n, (*h).into(), 0);
            }
            rig.dev.set_used_idx(idx);
            assert_eq!(rig.get_buf(), None);
            rig.ensure_broken_and_drained(&ALL)?;
        }

        // After a legitimate completion, a jump past the two still in flight.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(heads[0].into(), 100);
        assert_eq!(rig.get_buf(), Some((token(0), 100)));
        rig.dev.set_used_idx(4);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&[token(1), token(2)])?;

        // Seen first by enable_cb (EVENT_IDX, callbacks re-enabled after a poll).
        let (mut rig, _) = three_in_flight(Setup::new(8).features(EVENT_IDX))?;
        rig.disable_cb();
        rig.dev.set_used_idx(5);
        rig.enable_cb();
        assert!(rig.vq.is_broken());
        rig.ensure_broken_and_drained(&ALL)?;
        Ok(())
    }

    #[test]
    fn ring_memory_is_not_trusted() -> Result {
        // The device overwrites every descriptor and the avail ring after taking the buffers;
        // the driver frees chains from its own shadow and republishes its own avail index.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        let lens = [100u32, 50, 0];
        let avail_end = rig.dev.avail_ring(8) + 2;
        let mut off = 0;
        while off < avail_end {
            rig.dev.mem.write_u16(off, 0xffff);
            off += 2;
        }
        for (h, len) in heads.iter().zip(lens) {
            rig.dev.push_used((*h).into(), len);
        }
        for (i, len) in lens.iter().enumerate() {
            assert_eq!(rig.get_buf(), Some((token(i), *len)));
        }
        assert!(!rig.vq.is_broken());
        assert_eq!(rig.num_free(), 8);

        // The ring still works: fresh, well-formed chains at the driver's index.
        let sg = [Sg::new(addr(5), 24); 8];
        rig.add(&sg[..3], &sg[3..], token(10))?;
        assert_eq!(rig.dev.avail_idx(), 4);
        let (_, len) = rig.dev.complete()?;
        assert_eq!(len, 5 * 24);
        assert_eq!(rig.get_buf(), Some((token(10), 5 * 24)));
        assert_eq!(rig.num_free(), 8);
        assert!(!rig.vq.is_broken());
        Ok(())
    }

    #[test]
    fn broken_queue_frees_indirect_tables() -> Result {
        let mut rig = Setup::new(8).features(INDIRECT).build()?;
        let sg = [Sg::new(addr(0), 32); 3];
        for i in 0..3 {
            rig.add(&sg[..1], &sg[1..], token(i))?;
        }
        rig.add_in(16, token(3))?;
        assert_eq!(load(&rig.ctx.allocs), 3);
        let heads = rig.dev.pop_n(4)?;
        rig.dev.complete_head(heads[1])?;
        assert_eq!(rig.get_buf(), Some((token(1), 64)));
        rig.dev.push_used(heads[1].into(), 64);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&[token(0), token(2), token(3)])?;
        assert_eq!(load(&rig.ctx.frees), 3);
        Ok(())
    }

    #[test]
    fn transport_break() -> Result {
        // The transport marks the queue broken (surprise removal): a valid completion that
        // is already in the used ring is not handed out either.
        let (mut rig, heads) = three_in_flight(Setup::new(8))?;
        rig.dev.push_used(heads[1].into(), 50);
        rig.vq.mark_broken();
        // The driver's callback ran once, so that a driver waiting for the device wakes.
        assert_eq!(load(&rig.ctx.callbacks), 1);
        rig.vq.mark_broken();
        assert_eq!(load(&rig.ctx.callbacks), 1);
        assert_eq!(rig.get_buf(), None);
        rig.ensure_broken_and_drained(&ALL)?;

        // The notification reports the device gone.
        let (rig, _) = three_in_flight(Setup::new(8))?;
        rig.ctx.notify_ok.store(false, Relaxed);
        assert!(rig.kick_prepare());
        assert!(!rig.vq.notify());
        assert_eq!(load(&rig.ctx.notifies), 1);
        rig.ensure_broken_and_drained(&ALL)?;
        Ok(())
    }
}

#[kunit_tests(virtio_ring_rs_fault)]
mod fault_tests {
    use super::*;
    use crate::fault::{self, Kind};

    const ALL: [usize; 3] = [token(0), token(1), token(2)];

    /// A queue of 8 with three buffers the device took (as in the hostile suite).
    fn three_in_flight() -> Result<(Rig, KVec<u16>)> {
        let mut rig = Setup::new(8).build()?;
        rig.add(&[Sg::new(addr(0), 16)], &[Sg::new(addr(1), 100)], token(0))?;
        rig.add_in(50, token(1))?;
        rig.add(&[Sg::new(addr(2), 32)], &[], token(2))?;
        let heads = rig.dev.pop_n(3)?;
        Ok((rig, heads))
    }

    #[test]
    fn len_fault_is_clamped() -> Result {
        fault::disarm();
        let before = fault::injected();
        let (mut rig, heads) = three_in_flight()?;
        fault::arm(Kind::UsedLen, Some(QUEUE_INDEX));
        rig.dev.push_used(heads[1].into(), 50);
        // Read as 0xffffffff bytes: the driver gets the 50 the buffer holds.
        assert_eq!(rig.get_buf(), Some((token(1), 50)));
        assert!(!rig.vq.is_broken());
        assert_eq!(rig.vq.clamped_lens(), 1);
        assert_eq!(fault::injected(), before + 1);
        assert_eq!(fault::armed(), None);
        Ok(())
    }

    #[test]
    fn each_fault_breaks_the_queue_once() -> Result {
        fault::disarm();
        for kind in [Kind::UsedId, Kind::UsedIdxJump] {
            let before = fault::injected();
            let (mut rig, heads) = three_in_flight()?;
            fault::arm(kind, Some(QUEUE_INDEX));
            // Nothing to read yet: the fault waits for a completion.
            assert_eq!(rig.get_buf(), None);
            assert!(!rig.vq.is_broken());
            assert_eq!(fault::armed(), Some((kind, Some(QUEUE_INDEX))));
            // A valid completion, read through the fault: detected, nothing handed out.
            rig.dev.push_used(heads[1].into(), 50);
            assert_eq!(rig.get_buf(), None);
            assert!(rig.vq.is_broken());
            assert_eq!(fault::injected(), before + 1);
            assert_eq!(fault::armed(), None);
            // The ring memory itself was not touched: the device's element is intact.
            assert_eq!(
                rig.dev.mem.read_u32(rig.dev.used_elem(0)),
                u32::from(heads[1])
            );
            rig.ensure_broken_and_drained(&ALL)?;

            // It fired once: the next queue works.
            let (mut rig, heads) = three_in_flight()?;
            rig.dev.push_used(heads[1].into(), 50);
            assert_eq!(rig.get_buf(), Some((token(1), 50)));
            assert!(!rig.vq.is_broken());
        }
        Ok(())
    }

    #[test]
    fn fault_targets_its_queue() -> Result {
        fault::disarm();
        let before = fault::injected();
        fault::arm(Kind::UsedId, Some(QUEUE_INDEX + 1));
        let (mut rig, heads) = three_in_flight()?;
        rig.dev.push_used(heads[0].into(), 100);
        assert_eq!(rig.get_buf(), Some((token(0), 100)));
        assert!(!rig.vq.is_broken());
        assert_eq!(fault::injected(), before);
        // Any queue.
        fault::arm(Kind::UsedId, None);
        rig.dev.push_used(heads[1].into(), 50);
        assert_eq!(rig.get_buf(), None);
        assert!(rig.vq.is_broken());
        assert_eq!(fault::injected(), before + 1);
        rig.ensure_broken_and_drained(&[token(1), token(2)])?;
        Ok(())
    }

    #[test]
    fn commands() -> Result {
        fault::disarm();
        assert_eq!(fault::command(b"id 2\n"), Ok(()));
        assert_eq!(fault::armed(), Some((Kind::UsedId, Some(2))));
        assert_eq!(fault::command(b"jump"), Ok(()));
        assert_eq!(fault::armed(), Some((Kind::UsedIdxJump, None)));
        assert_eq!(fault::command(b" len\t0 "), Ok(()));
        assert_eq!(fault::armed(), Some((Kind::UsedLen, Some(0))));
        for bad in [
            &b""[..],
            b"\n",
            b"bogus",
            b"id x",
            b"id 65535",
            b"id 70000",
            b"id 1 2",
            b"off 1",
        ] {
            assert_eq!(fault::command(bad), Err(EINVAL));
        }
        // A bad command leaves the armed fault alone.
        assert_eq!(fault::armed(), Some((Kind::UsedLen, Some(0))));
        assert_eq!(fault::command(b"off\n"), Ok(()));
        assert_eq!(fault::armed(), None);
        Ok(())
    }
}
