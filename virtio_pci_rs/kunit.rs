// SPDX-License-Identifier: GPL-2.0

//! KUnit suite of the transport: feature negotiation, the guest-physical addresses a legacy
//! device is given, and the indirect-table allocator serving a real queue of `virtio_ring_rs`.
//!
//! Memory shared with the device ([`LegacyBuf`]) needs a device that can do coherent DMA; the
//! suite registers a faux device and gives it a coherent mask (44 bits, as the transport sets
//! on a legacy function).  The queue is created through the exported ring functions, as
//! `setup_vq` does, over ring memory of the test, and the test plays the device with the
//! ring's device model ([`DeviceRing`]): it reads the avail ring and the descriptors, follows
//! the indirect table through the CPU address the allocator returned for its device address,
//! and completes buffers in the used ring.
//!
//! Compiled only into the test flavour of the module (`--cfg virtio_rs_kunit`).
//!
//! Holds `unsafe`: the test plays the device over raw ring memory and implements the ring's
//! `extern "C"` callbacks.

use crate::{
    abi::{
        self,
        guest_phys,
        AbiHeader,
        LegacyBuf,
        OwnedVq,
        Sg,
        Virtqueue, //
        VqParams,
    },
    device::{
        Desc,
        DeviceRing, //
    },
    indirect::{
        self,
        IndirectPool, //
    },
    regs,
    split::{
        self,
        Barrier,
        Layout,
        RingMem, //
    },
    transport::negotiate,
};
use core::{
    ffi::c_void,
    num::NonZeroUsize, //
};
use kernel::{
    bindings, device, faux, new_spinlock,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        SpinLock,
    },
};

/// Feature bit mask of INDIRECT_DESC.
const INDIRECT: u64 = 1 << split::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature bit mask of EVENT_IDX.
const EVENT_IDX: u64 = 1 << split::VIRTIO_RING_F_EVENT_IDX;
/// Feature bit mask of the legacy BAD_FEATURE bit.
const BAD: u64 = 1 << regs::F_BAD_FEATURE;
use split::{
    VRING_ALIGN as ALIGN,
    VRING_DESC_F_INDIRECT as F_INDIRECT,
    VRING_DESC_F_NEXT as F_NEXT,
    VRING_DESC_F_WRITE as F_WRITE, //
};

/// A faux device with a coherent DMA mask, standing for a PCI function.
struct DmaDevice(faux::Registration);

impl DmaDevice {
    fn new() -> Result<Self> {
        let reg = faux::Registration::new(c"virtio_pci_rs_kunit", None)?;
        let dev: &device::Device = reg.as_ref();
        // CAST: `device::Device` is transparent over the C struct (see `indirect.rs`).
        let raw = core::ptr::from_ref(dev)
            .cast::<bindings::device>()
            .cast_mut();
        // SAFETY: `raw` is the registered faux device, which no driver uses; the mask is the
        // one the transport gives a legacy function (queue PFNs are 32 bits).
        let ret = unsafe {
            bindings::dma_set_coherent_mask(raw, (1u64 << (32 + regs::QUEUE_ADDR_SHIFT)) - 1)
        };
        kernel::error::to_result(ret)?;
        Ok(Self(reg))
    }

    /// The device, bound.
    fn bound(&self) -> &device::Device<device::Bound> {
        let dev: &device::Device = self.0.as_ref();
        // SAFETY: `device::Device<Ctx>` is `#[repr(transparent)]` over the C struct for every
        // context; a registered faux device is bound to the faux bus driver
        // (`faux_device_create()` fails otherwise) until the registration is dropped, which
        // outlives the borrow of `self`.
        unsafe { &*core::ptr::from_ref(dev).cast::<device::Device<device::Bound>>() }
    }
}

/// What the test's wrappers of the transport's allocator saw; the wrappers only observe: the
/// tables come from, and go back to, [`indirect::indirect_alloc`] / `indirect_free`.
struct Recorder {
    /// The context of the transport's callbacks (the pool).
    pool_ctx: *const c_void,
    calls: Atomic<u32>,
    allocs: Atomic<u32>,
    frees: Atomic<u32>,
    last_cpu: Atomic<usize>,
    last_dma: Atomic<u64>,
    last_bytes: Atomic<usize>,
}

/// The test's allocator: calls the transport's and records the table.
///
/// # Safety
///
/// `ctx` must point to a live [`Recorder`] whose pool is live; `dma` valid for a write.
unsafe extern "C" fn rec_alloc(
    ctx: *const c_void,
    bytes: usize,
    atomic: bool,
    dma: *mut u64,
) -> *mut c_void {
    // SAFETY: The caller's guarantee.
    let rec = unsafe { &*ctx.cast::<Recorder>() };
    rec.calls.add(1u32, Relaxed);
    // SAFETY: `pool_ctx` is the context of a live pool; `dma` is valid (caller's guarantee).
    let cpu = unsafe { indirect::indirect_alloc(rec.pool_ctx, bytes, atomic, dma) };
    if !cpu.is_null() {
        rec.allocs.add(1u32, Relaxed);
        // CAST: the address is only compared and turned back into a pointer by the test.
        rec.last_cpu.store(cpu as usize, Relaxed);
        // SAFETY: The allocator wrote it.
        rec.last_dma.store(unsafe { dma.read() }, Relaxed);
        rec.last_bytes.store(bytes, Relaxed);
    }
    cpu
}

/// The test's free: records and calls the transport's.
///
/// # Safety
///
/// As [`indirect::indirect_free`], with `ctx` a live [`Recorder`].
unsafe extern "C" fn rec_free(ctx: *const c_void, cpu: *mut c_void, dma: u64, bytes: usize) {
    // SAFETY: The caller's guarantee.
    let rec = unsafe { &*ctx.cast::<Recorder>() };
    rec.frees.add(1u32, Relaxed);
    // SAFETY: The caller's guarantee, forwarded.
    unsafe { indirect::indirect_free(rec.pool_ctx, cpu, dma, bytes) }
}

/// The test's notification: counts.
///
/// # Safety
///
/// `ctx` must point to a live `Atomic<u32>`.
unsafe extern "C" fn notify(ctx: *const c_void, _index: u16) -> bool {
    // SAFETY: The caller's guarantee.
    unsafe { &*ctx.cast::<Atomic<u32>>() }.add(1u32, Relaxed);
    true
}

/// Memory the test plays the device on: the ring, or an indirect table, through raw pointers
/// (the ring module writes the same memory through its own), with volatile accesses as a
/// device makes them.
///
/// # Invariants
///
/// `base` is valid for reads and writes of `len` bytes and 8-byte aligned while the view
/// lives.
struct RawMem {
    base: *mut u8,
    len: usize,
}

impl RawMem {
    /// A view of `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// - `base` is valid for reads and writes of `len` bytes while the view lives.
    /// - `base` is 8-byte aligned.
    unsafe fn new(base: *mut u8, len: usize) -> Self {
        // INVARIANT: the caller's guarantee.
        Self { base, len }
    }

    /// Whether an access of `size` bytes at `off` is in bounds and naturally aligned.
    fn fits(&self, off: usize, size: usize) -> bool {
        off % size == 0 && off.checked_add(size).is_some_and(|end| end <= self.len)
    }

    /// Reads a `T` at `off`; zero when the access does not fit.
    fn read<T: Copy + Default>(&self, off: usize) -> T {
        if !self.fits(off, size_of::<T>()) {
            return T::default();
        }
        // SAFETY:
        // - `off + size_of::<T>() <= len`, checked above, and `base` is valid for `len` bytes
        //   (type invariant).
        // - `off` is a multiple of the size of `T` and `base` is 8-byte aligned (type
        //   invariant), so the address is aligned for the integers this is used with.
        unsafe { self.base.add(off).cast::<T>().read_volatile() }
    }

    /// Writes a `T` at `off`; nothing when the access does not fit.
    fn write<T: Copy>(&self, off: usize, val: T) {
        if !self.fits(off, size_of::<T>()) {
            return;
        }
        // SAFETY:
        // - In bounds: `off + size_of::<T>() <= len`, checked above; `base` is valid for
        //   writes of `len` bytes (type invariant).
        // - Aligned: `off` is a multiple of the size of `T`, `base` 8-byte aligned.
        unsafe { self.base.add(off).cast::<T>().write_volatile(val) }
    }
}

impl RingMem for RawMem {
    crate::split::ring_mem_checked_accessors!();

    fn barrier(&self, _kind: Barrier) {
        // The test and the queue run on one thread: program order is enough.
    }
}

/// A queue of the ring module with the transport's allocator, and its simulated device.
///
/// Fields drop in order: the driver handle and the queue go before everything they use.
struct Rig {
    q: Virtqueue,
    vq: OwnedVq,
    /// The device's state of the ring.
    dev: DeviceRing,
    /// The device's view of `_ring` (declared first: dropped before it).
    mem: RawMem,
    _ring: KVec<u64>,
    rec: KBox<Recorder>,
    pool: KBox<IndirectPool>,
    kicks: KBox<Atomic<u32>>,
    _dev: DmaDevice,
}

impl Rig {
    /// A queue of `num` entries with `features`, its indirect tables from the transport's
    /// pool (created exactly as `setup_vq` creates it).
    fn new(num: u32, features: u64) -> Result<Self> {
        let dev = DmaDevice::new()?;
        let pool = KBox::new(IndirectPool::new(num)?, GFP_KERNEL)?;
        let (_, _, pool_ctx) = pool.callbacks();
        let rec = KBox::new(
            Recorder {
                pool_ctx,
                calls: Atomic::new(0),
                allocs: Atomic::new(0),
                frees: Atomic::new(0),
                last_cpu: Atomic::new(0),
                last_dma: Atomic::new(0),
                last_bytes: Atomic::new(0),
            },
            GFP_KERNEL,
        )?;
        let kicks = KBox::new(Atomic::new(0u32), GFP_KERNEL)?;
        let layout = Layout::new(num, ALIGN).map_err(|_| EINVAL)?;
        // CAST: `VRING_ALIGN` (4096) fits any integer type.
        let size = abi::vring_size(num, ALIGN as u32)?;
        let mut ring = KVec::from_elem(0u64, size.div_ceil(8), GFP_KERNEL)?;
        let params = VqParams {
            header: AbiHeader::for_type::<VqParams>(),
            index: 0,
            _reserved: 0,
            num,
            features,
            ring: ring.as_mut_ptr().cast(),
            // CAST: nothing does DMA to the ring; the CPU address stands for it.
            ring_dma: ring.as_ptr() as u64,
            ring_len: ring.len() * 8,
            notify: Some(notify),
            notify_ctx: core::ptr::from_ref(&*kicks).cast(),
            callback: None,
            callback_ctx: core::ptr::null(),
            indirect_alloc: Some(rec_alloc),
            indirect_free: Some(rec_free),
            indirect_ctx: core::ptr::from_ref(&*rec).cast(),
        };
        // SAFETY: The ring memory, the recorder, the pool and the kick counter are owned by
        // the returned `Rig`, which drops the queue first; the boxes and the vector's buffer
        // do not move.
        let vq = unsafe { OwnedVq::new(&params)? };
        // SAFETY: The only handle; it is dropped before `vq` (field order).
        let q = unsafe { vq.driver_handle() };
        // SAFETY:
        // - The vector's buffer is valid for `ring.len() * 8` bytes while `mem` lives: it is
        //   owned by the same `Rig`, dropped after `mem` (field order), and never resized.
        // - It is 8-byte aligned (`KVec<u64>`).
        let mem = unsafe { RawMem::new(ring.as_mut_ptr().cast(), ring.len() * 8) };
        Ok(Self {
            q,
            vq,
            dev: DeviceRing::new(layout, features & EVENT_IDX != 0),
            mem,
            _ring: ring,
            rec,
            pool,
            kicks,
            _dev: dev,
        })
    }

    /// Takes the next head the driver made available.
    fn pop(&mut self) -> Option<u16> {
        self.dev.pop_head(&self.mem)
    }

    /// Ring descriptor `i` (of the queue size: masked).
    fn desc(&self, i: u16) -> Desc {
        let i = i & self.dev.layout().mask();
        Desc::read(&self.mem, i).unwrap_or(Desc::INVALID)
    }

    /// Publishes a used element for `head` with `len` written bytes.
    fn push_used(&mut self, head: u16, len: u32) {
        self.dev.push(&self.mem, head.into(), len)
    }

    /// The descriptors of the indirect table the allocator handed out last, as the device
    /// reads them through the CPU address that belongs to `addr`.
    fn last_table(&self, addr: u64, len: u32) -> Result<KVec<Desc>> {
        if addr != self.rec.last_dma.load(Relaxed)
            || usize::try_from(len)? != self.rec.last_bytes.load(Relaxed)
        {
            pr_err!("the descriptor does not point to the last table allocated\n");
            return Err(EINVAL);
        }
        let cpu = self.rec.last_cpu.load(Relaxed) as *mut u8;
        let bytes = usize::try_from(len)?;
        // SAFETY:
        // - The table of a buffer in flight is live pool memory of `len` bytes (the recorder
        //   saw it allocated with that size, and the buffer is not completed yet).
        // - Pool tables are 16-byte aligned (`indirect.rs`, `TABLE_ALIGN`), so 8-byte aligned.
        // - Nothing holds a reference to that memory while the view lives.
        let table = unsafe { RawMem::new(cpu, bytes) };
        let n = u16::try_from(bytes / split::DESC_SIZE)?;
        let mut out = KVec::with_capacity(n.into(), GFP_KERNEL)?;
        for i in 0..n {
            out.push(Desc::read(&table, i).ok_or(EINVAL)?, GFP_KERNEL)?;
        }
        Ok(out)
    }

    fn calls(&self) -> u32 {
        self.rec.calls.load(Relaxed)
    }

    fn allocs(&self) -> u32 {
        self.rec.allocs.load(Relaxed)
    }

    fn frees(&self) -> u32 {
        self.rec.frees.load(Relaxed)
    }
}

/// A token for `add`.
fn tok(n: usize) -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(n)
}

/// A fake buffer address (never accessed).
const fn buf(n: u64) -> u64 {
    0x10_0000 + n * 0x1000
}

/// What QEMU's legacy balloon offers with `deflate-on-oom=on`: STATS_VQ, DEFLATE_ON_OOM,
/// NOTIFY_ON_EMPTY (24), ANY_LAYOUT (27), INDIRECT_DESC, EVENT_IDX and BAD_FEATURE.
const QEMU_BALLOON: u32 = 0b110 | (1 << 24) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 30);

#[kunit_tests(virtio_pci_rs_transport)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_is_device_and_driver_and_ring() {
        let ring = abi::ring_features();
        // The ring implements both ring features.
        assert_eq!(ring & (INDIRECT | EVENT_IDX), INDIRECT | EVENT_IDX);
        let host = QEMU_BALLOON;
        // A driver that asks for no ring feature gets none, whatever the device offers.
        assert_eq!(negotiate(host, 0b111, ring), 0b110);
        // Asked for and offered: negotiated.
        assert_eq!(
            negotiate(host, 0b111 | INDIRECT, ring),
            0b110 | (1 << split::VIRTIO_RING_F_INDIRECT_DESC)
        );
        assert_eq!(
            negotiate(host, INDIRECT | EVENT_IDX, ring),
            (1 << 28) | (1 << 29)
        );
        // Not offered by the device, or not implemented by the ring: not negotiated.
        assert_eq!(negotiate(host & !(1 << 28), 0b111 | INDIRECT, ring), 0b110);
        assert_eq!(negotiate(host, INDIRECT | EVENT_IDX, 0), 0);
        // Bit 30 never, even for a driver that asks for everything; bits above 31 do not
        // exist on the legacy interface.
        assert_eq!(negotiate(host, !0, ring), host & !(1 << 30));
        assert_eq!(negotiate(host, BAD, ring), 0);
        assert_eq!(negotiate(u32::MAX, !0, 0), (1 << 28) - 1);
    }

    #[test]
    fn legacy_memory_has_its_guest_physical_address() -> Result {
        let dev = DmaDevice::new()?;
        // Four pages and a bit: the address covers them all, contiguously.
        let len = 4 * 4096 + 100;
        let buf = LegacyBuf::<u8>::zeroed_slice(dev.bound(), len, GFP_KERNEL)?;
        let addr = buf.device_addr();
        let cpu = buf.as_ptr().cast::<u8>();
        assert_eq!(addr % 4096, 0);
        assert!(addr != 0 && addr < 1u64 << (32 + regs::QUEUE_ADDR_SHIFT));
        for off in [0, 4096, 3 * 4096 + 8, len - 1] {
            // SAFETY: Inside the live allocation.
            let phys = unsafe { guest_phys(cpu.wrapping_add(off), 1) };
            // CAST: small offsets.
            assert_eq!(phys, Ok(addr + off as u64));
        }
        // No IOMMU translates for this device: here the DMA handle happens to be the same
        // number (behind an IOMMU it is not; `tests/integration/test_viommu.py`).
        pr_info!(
            "legacy buffer: guest-physical {:#x}, DMA handle {:#x}\n",
            addr,
            buf.dma_handle()
        );
        assert_eq!(buf.dma_handle(), addr);
        // Memory from kmalloc is linearly mapped and contiguous too.
        let v = KVec::<u64>::from_elem(0, 1024, GFP_KERNEL)?;
        // SAFETY: The vector's 8 KiB, live while `v` is.
        let phys = unsafe { guest_phys(v.as_ptr().cast(), 8192) }?;
        // SAFETY: The 8 bytes at offset 4096 lie inside the vector's 8 KiB, live while `v` is.
        let second = unsafe { guest_phys(v.as_ptr().cast::<u8>().wrapping_add(4096), 8) };
        assert_eq!(second, Ok(phys + 4096));
        // Nothing is no address.
        // SAFETY: No byte is covered (length 0); the address is the live vector's.
        let none = unsafe { guest_phys(v.as_ptr().cast(), 0) };
        assert_eq!(none, Err(EINVAL));
        Ok(())
    }

    #[test]
    fn indirect_tables_come_from_the_pool_and_go_back() -> Result {
        let mut rig = Rig::new(8, INDIRECT)?;
        assert_eq!(rig.pool.max_bytes(), 8 * 16);
        let out = [Sg::new(buf(0), 16)];
        let inp = [Sg::new(buf(1), 100), Sg::new(buf(2), 200)];
        rig.q.add(&out, &inp, tok(0))?;
        assert_eq!(rig.allocs(), 1);
        assert_eq!(rig.pool.in_use(), 1);
        assert!(rig.q.kick());
        assert_eq!(rig.kicks.load(Relaxed), 1);

        // The device finds one ring descriptor pointing to the table, in coherent memory of
        // the pool below the device's coherent mask.
        let head = rig.pop().ok_or(ENOENT)?;
        let d = rig.desc(head);
        assert_eq!(d.flags, F_INDIRECT);
        assert_eq!(d.len, 3 * 16);
        assert_eq!(d.addr % 16, 0);
        assert!(d.addr != 0 && d.addr < 1u64 << (32 + regs::QUEUE_ADDR_SHIFT));
        let t = rig.last_table(d.addr, d.len)?;
        assert_eq!(t.len(), 3);
        // The device got the table's guest-physical address (a legacy device bypasses any
        // IOMMU), not a DMA handle.
        // CAST: the recorder keeps the table's CPU address as an integer.
        let cpu = rig.rec.last_cpu.load(Relaxed) as *const u8;
        // SAFETY: The table of a buffer in flight: live kmalloc memory of `d.len` bytes.
        let phys = unsafe { guest_phys(cpu, 3 * 16) };
        assert_eq!(phys, Ok(d.addr));
        assert_eq!(
            t[0],
            Desc {
                addr: buf(0),
                len: 16,
                flags: F_NEXT,
                next: 1
            }
        );
        assert_eq!(
            t[1],
            Desc {
                addr: buf(1),
                len: 100,
                flags: F_NEXT | F_WRITE,
                next: 2
            }
        );
        assert_eq!(
            t[2],
            Desc {
                addr: buf(2),
                len: 200,
                flags: F_WRITE,
                next: 0
            }
        );

        // Completion gives the table back to the pool.
        rig.push_used(head, 300);
        assert_eq!(rig.q.get_buf(), Some((tok(0), 300)));
        assert_eq!(rig.frees(), 1);
        assert_eq!(rig.pool.in_use(), 0);

        // So does detaching buffers the device never used (teardown after a reset).
        rig.q.add(&out, &inp, tok(1))?;
        rig.q.add(&out, &inp[..1], tok(2))?;
        assert_eq!(rig.pool.in_use(), 2);
        let a = rig.q.detach_unused().ok_or(ENOENT)?;
        let b = rig.q.detach_unused().ok_or(ENOENT)?;
        assert!(rig.q.detach_unused().is_none());
        assert!((a, b) == (tok(1), tok(2)) || (a, b) == (tok(2), tok(1)));
        assert_eq!(rig.pool.in_use(), 0);

        // One element never takes a table.
        let calls = rig.calls();
        rig.q.add(&[], &inp[..1], tok(3))?;
        assert_eq!(rig.calls(), calls);

        // And destroying a queue with a table in flight gives that table back too.
        rig.q.add(&out, &inp, tok(4))?;
        assert_eq!(rig.pool.in_use(), 1);
        // The driver handle (`rig.q`, a plain pointer) is not used again.
        let Rig { vq, pool, rec, .. } = rig;
        drop(vq);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(rec.allocs.load(Relaxed), rec.frees.load(Relaxed));
        Ok(())
    }

    #[test]
    fn no_table_without_the_feature() -> Result {
        let mut rig = Rig::new(8, 0)?;
        rig.q
            .add(&[Sg::new(buf(0), 16)], &[Sg::new(buf(1), 16)], tok(0))?;
        assert_eq!(rig.calls(), 0);
        let head = rig.pop().ok_or(ENOENT)?;
        assert_eq!(rig.desc(head).flags, F_NEXT);
        Ok(())
    }

    #[test]
    fn atomic_allocation_under_a_spinlock() -> Result {
        let pool = IndirectPool::new(128)?;
        let (alloc, free, ctx) = pool.callbacks();
        let lock = KBox::pin_init(new_spinlock!(0u32), GFP_KERNEL)?;
        let lock: Pin<&SpinLock<u32>> = lock.as_ref();
        let guard = lock.lock();
        let mut dma = 0u64;
        // SAFETY: `ctx` is the live pool's context, `dma` a valid out pointer.
        let cpu = unsafe { alloc(ctx, 64 * 16, true, &mut dma) };
        let got = !cpu.is_null() && dma != 0 && pool.in_use() == 1;
        if !cpu.is_null() {
            // SAFETY: The table just allocated, freed once, never used.
            unsafe { free(ctx, cpu, dma, 64 * 16) };
        }
        drop(guard);
        assert!(got);
        assert_eq!(pool.in_use(), 0);
        // Requests the pool cannot serve fail cleanly, in any context.
        let mut dma = 0u64;
        // SAFETY: `ctx` is the live pool's context, `dma` a valid out pointer.
        assert!(unsafe { alloc(ctx, 0, true, &mut dma) }.is_null());
        // SAFETY: `ctx` is the live pool's context, `dma` a valid out pointer.
        assert!(unsafe { alloc(ctx, 128 * 16 + 16, false, &mut dma) }.is_null());
        assert_eq!(pool.in_use(), 0);
        Ok(())
    }

    #[test]
    fn oversized_tables_fall_back_to_direct_chains() -> Result {
        let mut rig = Rig::new(512, INDIRECT)?;
        assert_eq!(rig.pool.max_bytes(), indirect::MAX_TABLE_BYTES);
        let max = indirect::MAX_TABLE_BYTES / 16;
        let mut sg = KVec::with_capacity(max + 44, GFP_KERNEL)?;
        for i in 0..(max + 44) {
            // CAST: small indexes.
            sg.push(Sg::new(buf(i as u64), 8), GFP_KERNEL)?;
        }
        // One page of descriptors fits a table.
        rig.q.add(&sg[..max], &[], tok(0))?;
        assert_eq!(rig.allocs(), 1);
        let h0 = rig.pop().ok_or(ENOENT)?;
        assert_eq!(rig.desc(h0).flags, F_INDIRECT);
        // CAST: `max` is 256.
        assert_eq!(rig.desc(h0).len, (max * 16) as u32);
        // More does not: the allocator refuses, the ring chains direct descriptors.
        rig.q.add(&sg, &[], tok(1))?;
        assert_eq!(rig.calls(), 2);
        assert_eq!(rig.allocs(), 1);
        assert_eq!(rig.pool.in_use(), 1);
        let h1 = rig.pop().ok_or(ENOENT)?;
        let mut i = h1;
        let mut n = 1;
        while rig.desc(i).flags & F_NEXT != 0 && n <= sg.len() {
            assert_eq!(rig.desc(i).flags & F_INDIRECT, 0);
            i = rig.desc(i).next;
            n += 1;
        }
        assert_eq!(n, sg.len());
        rig.push_used(h0, 0);
        rig.push_used(h1, 0);
        assert_eq!(rig.q.get_buf(), Some((tok(0), 0)));
        assert_eq!(rig.q.get_buf(), Some((tok(1), 0)));
        assert_eq!(rig.pool.in_use(), 0);
        Ok(())
    }
}
