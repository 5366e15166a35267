// SPDX-License-Identifier: GPL-2.0

//! The kernel side of a virtqueue: the ring core over the transport's DMA memory, with the
//! kernel's barriers, the transport's notification and the driver's callback.
//!
//! Concurrency (the contract of `common/virtio_rs.rs`): the caller serializes every call on
//! one queue, except [`Queue::interrupt`], [`Queue::is_broken`], [`Queue::mark_broken`] and
//! [`Queue::clamped_lens`], which touch only atomics and the device-written used index, and
//! may run at any time, in hard-IRQ context too.  The serialized state lives in an
//! [`UnsafeCell`] that only the serialized methods reach; the interrupt entry sees it through
//! two atomic mirrors, the consumed used index and (an upper bound of) the avail index.
//!
//! The per-descriptor state of a queue comes from `kvmalloc()` ([`KVVec`]): a queue of 32768
//! entries needs about 1.3 MiB of it, which a single `kmalloc()` may not find.
//!
//! Holds `unsafe` for the ring memory (volatile access to DMA-coherent memory the device
//! shares), the serialized state behind `UnsafeCell`, the queue's `Send`/`Sync`, and the
//! methods whose callers must serialize.

use crate::{
    abi::{
        CallbackFn,
        IndirectAllocFn,
        IndirectFreeFn,
        NotifyFn,
        Sg,
        VqParams, //
    },
    split::{
        self,
        Barrier,
        Completed,
        DescState,
        Indirect,
        Layout,
        RingError,
        RingMem,
        SplitRing, //
    },
};
use core::{
    cell::UnsafeCell,
    ffi::c_void,
    ptr::NonNull, //
};
#[cfg(not(target_arch = "x86_64"))]
use kernel::sync::barrier::{
    smp_mb,
    smp_rmb,
    smp_wmb, //
};
use kernel::{
    prelude::*,
    sync::atomic::{
        Atomic,
        AtomicType,
        Relaxed, //
    },
};

/// `READ_ONCE()` of an atomic, inline.
///
/// The same relaxed load as [`Atomic::load`] with [`Relaxed`], which on a kernel built without
/// `CONFIG_RUST_INLINE_HELPERS` is an out-of-line call to a C helper doing `READ_ONCE()`.  The
/// serialized ring operations read `broken` three times per buffer; under TCG those calls
/// made the Rust cycle 30% slower than C's (docs/BENCHMARKS.md, "Ring cycle").
#[inline(always)]
fn read_once<T: AtomicType>(a: &Atomic<T>) -> T {
    // SAFETY: `as_ptr()` is valid and aligned for `T` while `a` is borrowed.  A volatile load
    // of a naturally aligned word is `READ_ONCE()`, a marked access of the kernel memory
    // model that may race with the atomic's other operations, exactly as C mixes
    // `READ_ONCE()` with `WRITE_ONCE()` and `xchg()` on one variable.
    unsafe { a.as_ptr().read_volatile() }
}

/// `WRITE_ONCE()` of an atomic, inline: the relaxed store of [`Atomic::store`] without the
/// out-of-line helper call (see [`read_once`]).
#[inline(always)]
fn write_once<T: AtomicType>(a: &Atomic<T>, v: T) {
    // SAFETY: As in `read_once`: a volatile store of a naturally aligned word is
    // `WRITE_ONCE()`, a marked access that may race with the atomic's other operations.
    unsafe { a.as_ptr().write_volatile(v) }
}

/// Device-visible memory (a ring or an indirect table) accessed with volatile loads and
/// stores, as the C ring does through `READ_ONCE`/`WRITE_ONCE`-like accessors.
///
/// Every safe access is bounds- and alignment-checked: a bad offset reads 0 and writes
/// nothing, so no caller can make this type touch memory outside the region (the ring core
/// never asks for such an offset).  The ring's hot paths use the `_unchecked` accessors of
/// [`RingMem`] on fields of a layout it checked the region covers.
///
/// # Invariants
///
/// `ptr` is valid for volatile reads and writes of `len` bytes for the lifetime of the value,
/// and is 8-byte aligned.  No Rust reference to that memory exists.
pub(crate) struct DmaMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl DmaMem {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if `ptr` is null or not 8-byte aligned.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for volatile reads and writes of `len` bytes for as long as the
    /// returned value exists, and nothing may hold a Rust reference to that memory.
    pub(crate) unsafe fn new(ptr: *mut c_void, len: usize) -> Result<Self> {
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(EINVAL)?;
        if ptr.as_ptr().align_offset(8) != 0 {
            return Err(EINVAL);
        }
        // INVARIANT: the caller guarantees validity, alignment was just checked.
        Ok(Self { ptr, len })
    }

    /// Pointer to a `T` at `off`, if it lies inside the region and is aligned.
    fn at<T>(&self, off: usize) -> Option<*mut T> {
        let size = core::mem::size_of::<T>();
        if off % size != 0 || off.checked_add(size)? > self.len {
            return None;
        }
        // SAFETY: `off + size <= len`, so the result stays inside the region (invariant).
        Some(unsafe { self.ptr.as_ptr().add(off) }.cast::<T>())
    }

    fn read<T: Copy + Default>(&self, off: usize) -> T {
        match self.at::<T>(off) {
            // SAFETY: `p` is in bounds and aligned (checked by `at`), valid for reads by the
            // type invariant; volatile because the device may write it concurrently.
            Some(p) => unsafe { p.read_volatile() },
            None => T::default(),
        }
    }

    fn write<T: Copy>(&self, off: usize, val: T) {
        if let Some(p) = self.at::<T>(off) {
            // SAFETY: As in `read`, for writes.
            unsafe { p.write_volatile(val) }
        }
    }

    /// Reads the `T` at `off`, unchecked.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of `size_of::<T>()` and `off + size_of::<T>() <= len`.
    #[inline(always)]
    unsafe fn read_unchecked<T: Copy>(&self, off: usize) -> T {
        // SAFETY: In bounds and aligned (the caller's guarantee and the 8-byte alignment of
        // `ptr`), valid for reads by the type invariant; volatile because the device may
        // write it concurrently.
        unsafe { self.ptr.as_ptr().add(off).cast::<T>().read_volatile() }
    }

    /// Writes the `T` at `off`, unchecked.
    ///
    /// # Safety
    ///
    /// As [`DmaMem::read_unchecked`].
    #[inline(always)]
    unsafe fn write_unchecked<T: Copy>(&self, off: usize, val: T) {
        // SAFETY: As in `read_unchecked`, for writes.
        unsafe { self.ptr.as_ptr().add(off).cast::<T>().write_volatile(val) }
    }
}

impl RingMem for DmaMem {
    crate::split::ring_mem_checked_accessors!();

    #[inline(always)]
    unsafe fn read_u16_unchecked(&self, off: usize) -> u16 {
        // SAFETY: The caller's guarantee is `read_unchecked`'s.
        unsafe { self.read_unchecked(off) }
    }

    #[inline(always)]
    unsafe fn read_u32_unchecked(&self, off: usize) -> u32 {
        // SAFETY: The caller's guarantee is `read_unchecked`'s.
        unsafe { self.read_unchecked(off) }
    }

    #[inline(always)]
    unsafe fn write_u16_unchecked(&self, off: usize, val: u16) {
        // SAFETY: The caller's guarantee is `write_unchecked`'s.
        unsafe { self.write_unchecked(off, val) }
    }

    #[inline(always)]
    unsafe fn write_u32_unchecked(&self, off: usize, val: u32) {
        // SAFETY: The caller's guarantee is `write_unchecked`'s.
        unsafe { self.write_unchecked(off, val) }
    }

    #[inline(always)]
    unsafe fn write_u64_unchecked(&self, off: usize, val: u64) {
        // SAFETY: The caller's guarantee is `write_unchecked`'s.
        unsafe { self.write_unchecked(off, val) }
    }

    fn barrier(&self, kind: Barrier) {
        // Legacy virtio-pci uses "weak barriers": the device is another CPU (QEMU), so the
        // SMP flavours are enough (`virtio_wmb(true)` and friends in C).
        //
        // On x86 they are inlined here as `arch/x86/include/asm/barrier.h` defines them, because
        // `kernel::sync::barrier` calls an out-of-line C helper for each (unless the kernel is
        // built with CONFIG_RUST_INLINE_HELPERS), and a ring cycle issues four of them.
        #[cfg(target_arch = "x86_64")]
        match kind {
            // `__smp_rmb()` (`dma_rmb()`) and `__smp_wmb()`: compiler barriers (x86 is TSO).
            Barrier::Read | Barrier::Write => {
                core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst)
            }
            // SAFETY: `__smp_mb()`: adds 0 to the word below the stack pointer, which changes
            // nothing (the kernel has no red zone); the default `asm!` options clobber memory
            // and flags, as C's `"memory", "cc"`.
            Barrier::Full => unsafe {
                core::arch::asm!("lock addl $0, -4(%rsp)", options(att_syntax))
            },
        }
        #[cfg(not(target_arch = "x86_64"))]
        match kind {
            Barrier::Read => smp_rmb(),
            Barrier::Write => smp_wmb(),
            Barrier::Full => smp_mb(),
        }
    }
}

// The transport's elements go to the ring as they are.
crate::split::element_by_fields!(Sg);

/// Where an indirect table came from, to give it back to the transport.
#[derive(Clone, Copy)]
struct IndirectTable {
    cpu: *mut c_void,
    dma: u64,
    bytes: usize,
}

/// The transport's indirect-table allocator.
#[derive(Clone, Copy)]
struct IndirectOps {
    alloc: IndirectAllocFn,
    free: IndirectFreeFn,
    ctx: *const c_void,
}

/// State only the serialized calls touch.
struct Serialized {
    ring: SplitRing<KVVec<DescState>>,
}

/// One virtqueue.
///
/// # Invariants
///
/// - `mem` is the ring memory of `serialized.ring`'s layout, valid until the queue is
///   dropped, as are the callback contexts (guaranteed by the creator, see [`Queue::new`]).
/// - `serialized` is only reached by methods whose callers are serialized (the locking
///   contract), so at most one reference to it exists at a time.
/// - `last_used` mirrors the ring's consumed used index; `avail` is at least the ring's avail
///   index from before it publishes a new one (so that no device completion can be seen
///   before the buffer it completes is counted); once `broken` is set it stays set.
/// - `clamped` mirrors the ring's count of clamped used lengths.
pub(crate) struct Queue {
    serialized: UnsafeCell<Serialized>,
    mem: DmaMem,
    index: u16,
    used_idx_off: usize,
    last_used: Atomic<u32>,
    avail: Atomic<u32>,
    clamped: Atomic<u32>,
    broken: Atomic<bool>,
    reported: Atomic<bool>,
    notify: NotifyFn,
    notify_ctx: *const c_void,
    callback: Option<CallbackFn>,
    callback_ctx: *const c_void,
    indirect: Option<IndirectOps>,
}

// SAFETY: The raw context pointers are owned by the transport and driver, which guarantee
// they may be used from any context (contract of `VqParams`); the serialized state is
// protected by the locking contract, the rest is atomics.
unsafe impl Send for Queue {}
// SAFETY: See `Send`; the `&self` methods that may run concurrently touch atomics only.
unsafe impl Sync for Queue {}

/// Maps a ring-core error to an errno.
fn to_errno(e: RingError) -> Error {
    match e {
        RingError::InvalidSize | RingError::EmptyBuffer | RingError::TooManyDescriptors => EINVAL,
        RingError::NoSpace => ENOSPC,
        RingError::Broken => EIO,
    }
}

impl Queue {
    /// Creates a queue from the transport's parameters.
    ///
    /// # Errors
    ///
    /// `EPROTO` for a foreign parameter block, `EINVAL` for a bad size or too little memory,
    /// `ENOMEM`.
    ///
    /// # Safety
    ///
    /// The memory and contexts in `params` must be valid until the queue is dropped, and the
    /// callbacks safe to call with their contexts from any context (the driver callback: from
    /// hard-IRQ context).
    pub(crate) unsafe fn new(params: &VqParams) -> Result<Self> {
        params.header.check::<VqParams>()?;
        let layout = Layout::new(params.num, split::VRING_ALIGN).map_err(to_errno)?;
        if params.ring_len < layout.size() {
            return Err(EINVAL);
        }
        let notify = params.notify.ok_or(EINVAL)?;
        // SAFETY: The caller guarantees the ring memory for the queue's lifetime.
        let mem = unsafe { DmaMem::new(params.ring, params.ring_len)? };
        let indirect = match (params.indirect_alloc, params.indirect_free) {
            (Some(alloc), Some(free)) => Some(IndirectOps {
                alloc,
                free,
                ctx: params.indirect_ctx,
            }),
            _ => None,
        };
        let feature = |bit: u32| params.features & (1u64 << bit) != 0;
        let state = KVVec::from_elem(DescState::default(), layout.num().into(), GFP_KERNEL)?;
        let mut ring = SplitRing::new(
            layout,
            state,
            feature(split::VIRTIO_RING_F_EVENT_IDX),
            feature(split::VIRTIO_RING_F_INDIRECT_DESC) && indirect.is_some(),
        )
        .map_err(to_errno)?;
        ring.init(&mem);
        Ok(Self {
            serialized: UnsafeCell::new(Serialized { ring }),
            mem,
            index: params.index,
            used_idx_off: layout.used_idx(),
            last_used: Atomic::new(0),
            avail: Atomic::new(0),
            clamped: Atomic::new(0),
            broken: Atomic::new(false),
            reported: Atomic::new(false),
            notify,
            notify_ctx: params.notify_ctx,
            callback: params.callback,
            callback_ctx: params.callback_ctx,
            indirect,
        })
    }

    /// The serialized state.
    ///
    /// # Safety
    ///
    /// The caller must be one of the serialized calls (locking contract), so that no other
    /// reference to the state exists.
    #[allow(clippy::mut_from_ref)]
    unsafe fn serialized(&self) -> &mut Serialized {
        // SAFETY: Exclusive by the caller's guarantee and the type invariant.
        unsafe { &mut *self.serialized.get() }
    }

    /// Logs the device's first violation once, and publishes the broken state.
    ///
    /// Inline: it runs after every add and failed get_buf; the rare work is out of line.
    #[inline(always)]
    fn note_broken(&self, ring: &SplitRing<KVVec<DescState>>) {
        if ring.is_broken() {
            self.report_broken(ring);
        }
    }

    /// The slow path of [`Queue::note_broken`].
    #[cold]
    fn report_broken(&self, ring: &SplitRing<KVVec<DescState>>) {
        self.broken.store(true, Relaxed);
        if self.reported.xchg(true, Relaxed) {
            return;
        }
        match ring.violation() {
            Some(v) => pr_err!(
                "queue {}: device violated the ring protocol ({:?}); queue marked broken\n",
                self.index,
                v
            ),
            None => pr_warn!("queue {}: marked broken\n", self.index),
        }
    }

    /// Applies a `mark_broken` that arrived concurrently to the serialized state.
    fn sync_broken(&self, ring: &mut SplitRing<KVVec<DescState>>) {
        if read_once(&self.broken) && !ring.is_broken() {
            ring.mark_broken();
            // The transport said the device is gone: not a violation, nothing to report.
            self.reported.store(true, Relaxed);
        }
    }

    /// Adds a buffer of `out` readable then `inp` writable elements of `sg`.
    ///
    /// # Errors
    ///
    /// `EINVAL` (no element, too many), `ENOSPC` (ring full), `EIO` (broken), `ENOMEM`.
    ///
    /// # Safety
    ///
    /// Serialized call (locking contract).
    pub(crate) unsafe fn add(
        &self,
        sg: &[Sg],
        out: usize,
        token: NonNull<c_void>,
        atomic: bool,
    ) -> Result {
        // SAFETY: Serialized call, by the caller's guarantee.
        let ring = &mut unsafe { self.serialized() }.ring;
        self.sync_broken(ring);
        if out > sg.len() {
            return Err(EINVAL);
        }
        // INVARIANT: the bound covers the avail index the add may publish; the ring's write
        // barrier before it orders this store first.
        write_once(&self.avail, ring.avail_idx().wrapping_add(1).into());
        let res = self.add_inner(ring, sg, out, token, atomic);
        write_once(&self.avail, ring.avail_idx().into());
        res
    }

    /// [`Queue::add`] once the avail index bound is published.
    fn add_inner(
        &self,
        ring: &mut SplitRing<KVVec<DescState>>,
        sg: &[Sg],
        out: usize,
        token: NonNull<c_void>,
        atomic: bool,
    ) -> Result {
        let (out_bufs, in_bufs) = sg.split_at_checked(out).ok_or(EINVAL)?;
        // CAST: the token is an opaque, non-null pointer value.
        let token = token.as_ptr() as usize;

        if ring.wants_indirect(sg.len()) {
            if let Some(table) = self.alloc_indirect(sg.len(), atomic) {
                // SAFETY: The transport gave `table.bytes` bytes at `table.cpu`, ours until we
                // free them; nothing else references that memory.
                let res = match unsafe { DmaMem::new(table.cpu, table.bytes) } {
                    Ok(tmem) => {
                        let handle = KBox::new(table, if atomic { GFP_ATOMIC } else { GFP_KERNEL });
                        match handle {
                            Ok(handle) => {
                                let dma = handle.dma;
                                let raw = KBox::into_raw(handle);
                                let ind = Indirect {
                                    mem: &tmem,
                                    addr: dma,
                                    // CAST: the handle is the address of the boxed record.
                                    handle: raw as usize,
                                };
                                let r = ring.add(&self.mem, out_bufs, in_bufs, token, Some(ind));
                                if r.is_err() {
                                    // SAFETY: `raw` came from `KBox::into_raw` above and the
                                    // ring did not keep it (the add failed).
                                    self.free_indirect(*unsafe { KBox::from_raw(raw) });
                                }
                                r
                            }
                            Err(_) => {
                                self.free_indirect_parts(table.cpu, table.dma, table.bytes);
                                Err(RingError::NoSpace)
                            }
                        }
                    }
                    Err(_) => {
                        self.free_indirect(table);
                        Err(RingError::NoSpace)
                    }
                };
                match res {
                    Ok(()) => return Ok(()),
                    // Fall back to a direct chain, as C does when the table cannot be used.
                    Err(RingError::NoSpace) => {}
                    Err(e) => {
                        self.note_broken(ring);
                        return Err(to_errno(e));
                    }
                }
            }
        }
        let res = ring.add::<DmaMem, DmaMem, Sg>(&self.mem, out_bufs, in_bufs, token, None);
        self.note_broken(ring);
        res.map_err(to_errno)
    }

    fn alloc_indirect(&self, elems: usize, atomic: bool) -> Option<IndirectTable> {
        let ops = self.indirect?;
        let bytes = elems.checked_mul(split::DESC_SIZE)?;
        let mut dma = 0u64;
        // SAFETY: The allocator and its context are valid (type invariant); `dma` is a valid
        // out pointer.
        let cpu = unsafe { (ops.alloc)(ops.ctx, bytes, atomic, &mut dma) };
        if cpu.is_null() {
            return None;
        }
        Some(IndirectTable { cpu, dma, bytes })
    }

    fn free_indirect(&self, t: IndirectTable) {
        self.free_indirect_parts(t.cpu, t.dma, t.bytes)
    }

    fn free_indirect_parts(&self, cpu: *mut c_void, dma: u64, bytes: usize) {
        if let Some(ops) = self.indirect {
            // SAFETY: The table came from this allocator and is no longer used by the ring.
            unsafe { (ops.free)(ops.ctx, cpu, dma, bytes) }
        }
    }

    /// Takes back what a completed or detached buffer held, returning its token.
    fn finish(&self, c: Completed) -> *mut c_void {
        if let Some(handle) = c.indirect {
            // SAFETY: Indirect handles are only ever `KBox::into_raw` results made by `add`,
            // returned exactly once by the ring core.
            let table = unsafe { KBox::from_raw(handle as *mut IndirectTable) };
            self.free_indirect(*table);
        }
        // CAST: tokens are the pointer values `add` received.
        c.token as *mut c_void
    }

    /// Does the device need a notification for the buffers added since the last call?
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn kick_prepare(&self) -> bool {
        // SAFETY: Serialized call.
        let ring = &mut unsafe { self.serialized() }.ring;
        self.sync_broken(ring);
        ring.kick_prepare(&self.mem)
    }

    /// Notifies the device; false (and the queue is broken) if it is gone.
    pub(crate) fn notify(&self) -> bool {
        if read_once(&self.broken) {
            return false;
        }
        // SAFETY: The notify callback and its context are valid (type invariant).
        let ok = unsafe { (self.notify)(self.notify_ctx, self.index) };
        if !ok {
            self.mark_broken();
        }
        ok
    }

    /// The next used buffer's token (null if none) and written length.
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn get_buf(&self, len: &mut u32) -> *mut c_void {
        // SAFETY: Serialized call.
        let ring = &mut unsafe { self.serialized() }.ring;
        self.sync_broken(ring);
        #[cfg(any(virtio_rs_kunit, virtio_rs_fault))]
        let res = {
            // Test-only: a fault armed through debugfs corrupts what this read sees.
            let last = ring.last_used_idx();
            let pending = !ring.is_broken() && self.mem.read::<u16>(self.used_idx_off) != last;
            match crate::fault::take(self.index, pending) {
                Some(kind) => {
                    let view = crate::fault::FaultyMem::new(&self.mem, kind, ring.layout(), last);
                    ring.get_buf(&view)
                }
                None => ring.get_buf(&self.mem),
            }
        };
        #[cfg(not(any(virtio_rs_kunit, virtio_rs_fault)))]
        let res = ring.get_buf(&self.mem);
        write_once(&self.last_used, ring.last_used_idx().into());
        match res {
            Ok(Some(c)) => {
                if ring.clamped_lens() != read_once(&self.clamped) {
                    self.note_clamp(ring);
                }
                *len = c.len;
                self.finish(c)
            }
            Ok(None) => core::ptr::null_mut(),
            Err(_) => {
                self.note_broken(ring);
                core::ptr::null_mut()
            }
        }
    }

    /// Publishes the count of clamped used lengths, and logs the first one.
    #[cold]
    fn note_clamp(&self, ring: &SplitRing<KVVec<DescState>>) {
        let before = self.clamped.xchg(ring.clamped_lens(), Relaxed);
        if before == 0 {
            if let Some(c) = ring.first_clamp() {
                pr_warn!(
                    "queue {}: device reported more bytes than the buffer holds (used id {} \
                     len {} exceeds writable length {}); clamped, and counted from now on\n",
                    self.index,
                    c.id,
                    c.len,
                    c.max
                );
            }
        }
    }

    /// How many used lengths were clamped to their buffer's writable length.  Any context.
    pub(crate) fn clamped_lens(&self) -> u32 {
        self.clamped.load(Relaxed)
    }

    /// A buffer the device still owns, for teardown; null when all are back.
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn detach_unused(&self) -> *mut c_void {
        // SAFETY: Serialized call.
        let ring = &mut unsafe { self.serialized() }.ring;
        match ring.detach_unused(&self.mem) {
            Some(c) => self.finish(c),
            None => core::ptr::null_mut(),
        }
    }

    /// Disables callbacks.
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn disable_cb(&self) {
        // SAFETY: Serialized call.
        unsafe { self.serialized() }.ring.disable_cb(&self.mem)
    }

    /// Enables callbacks; false if buffers are already pending.
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn enable_cb(&self, delayed: bool) -> bool {
        // SAFETY: Serialized call.
        let ring = &mut unsafe { self.serialized() }.ring;
        let res = if delayed {
            ring.enable_cb_delayed(&self.mem)
        } else {
            ring.enable_cb(&self.mem)
        };
        self.note_broken(ring);
        res
    }

    /// Free descriptors.
    ///
    /// # Safety
    ///
    /// Serialized call.
    pub(crate) unsafe fn num_free(&self) -> u32 {
        // SAFETY: Serialized call.
        unsafe { self.serialized() }.ring.num_free().into()
    }

    /// The interrupt entry point: runs the driver's callback if the device used buffers
    /// since the driver last looked.  Any context; never touches the serialized state.
    ///
    /// Returns false when the device used nothing (the interrupt was not this queue's).  The
    /// used index is checked as `get_buf` checks it: a device claiming more completions than
    /// it holds buffers breaks the queue here (logged once), and runs no callback.  A broken
    /// queue with completions pending runs no callback either, but the interrupt was its own
    /// (C's `vring_interrupt()` returns `IRQ_HANDLED` then too).
    pub(crate) fn interrupt(&self) -> bool {
        // The consumed index first: it only moves up to a used index the driver saw, so the
        // used index read after it is never behind it (unless the device lies).
        // CAST: the mirrors only ever hold `u16` values.
        let last = read_once(&self.last_used) as u16;
        self.mem.barrier(Barrier::Read);
        let used: u16 = self.mem.read(self.used_idx_off);
        let pending = used.wrapping_sub(last);
        if pending == 0 {
            return false;
        }
        if read_once(&self.broken) {
            return true;
        }
        // Then the avail bound: read after the used index, it covers every buffer the device
        // could have completed by then.
        self.mem.barrier(Barrier::Read);
        // CAST: as above.
        let outstanding = (read_once(&self.avail) as u16).wrapping_sub(last);
        if pending > outstanding {
            self.broken.store(true, Relaxed);
            if !self.reported.xchg(true, Relaxed) {
                pr_err!(
                    "queue {}: device violated the ring protocol (used idx jumped from {} to \
                     {} with {} buffers out); queue marked broken\n",
                    self.index,
                    last,
                    used,
                    outstanding
                );
            }
            return true;
        }
        if let Some(cb) = self.callback {
            // SAFETY: The callback is safe to call with its context from any context
            // (contract of `VqParams`, checked by the creator).
            unsafe { cb(self.callback_ctx) };
        }
        true
    }

    /// Whether the queue is broken.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    /// Marks the queue broken (the device is gone); the serialized calls see it at their
    /// next entry.  The first time, the driver's callback runs, as an interrupt would, so that
    /// a driver waiting for a completion learns at once that none will come.  Any context.
    pub(crate) fn mark_broken(&self) {
        if self.broken.xchg(true, Relaxed) {
            return;
        }
        if let Some(cb) = self.callback {
            // SAFETY: The callback is safe to call with its context from any context
            // (contract of `VqParams`, checked by the creator).
            unsafe { cb(self.callback_ctx) };
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Give back the indirect tables of buffers nobody detached (the driver should have).
        let ring = &mut self.serialized.get_mut().ring;
        let mut leaked = 0u32;
        while let Some(c) = ring.detach_unused(&self.mem) {
            leaked += 1;
            if let Some(handle) = c.indirect {
                // SAFETY: As in `finish`.
                let table = unsafe { KBox::from_raw(handle as *mut IndirectTable) };
                if let Some(ops) = self.indirect {
                    // SAFETY: As in `free_indirect_parts`.
                    unsafe { (ops.free)(ops.ctx, table.cpu, table.dma, table.bytes) }
                }
            }
        }
        if leaked != 0 {
            pr_warn!(
                "queue {}: destroyed with {} buffers still in flight\n",
                self.index,
                leaked
            );
        }
    }
}
