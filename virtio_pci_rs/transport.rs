// SPDX-License-Identifier: GPL-2.0

//! The transport operations of one legacy function: status, features, configuration and
//! queues (`virtio_pci_legacy.c` and `virtio_pci_common.c`); its interrupts are in `irq.rs`.
//!
//! Where the device configuration starts in BAR0 follows whether MSI-X really is enabled.
//! `find_vqs` publishes the queues and the configuration callback to the interrupt handlers
//! after creating them, `del_vqs` withdraws them and waits for running handlers
//! (`synchronize_irq`) before destroying anything.
//!
//! The device is only ever given guest-physical addresses (`common/legacy_mem.rs`): a legacy
//! device bypasses any IOMMU.  `find_vqs` allocates everything before it programs a queue
//! address, and every error after one was programmed deactivates the queues before their
//! memory goes.
//!
//! Surprise removal: a function that is gone reads all ones.  When a read of the ISR, the
//! device configuration, the status or a queue register returns all ones, and the PCI core
//! confirms that the function no longer answers (`pci_device_is_present()`), every queue is
//! marked broken at once (which wakes its driver), so that no driver waits for a device that
//! will never answer; PCI unbind checks the same first, as `virtio_pci_remove()` does.
//!
//! Lock order: `Transport::queues` (a mutex) is the only lock; the interrupt handlers take
//! none.
//!
//! Holds `unsafe` for the `extern "C"` transport operations the shared contract calls (their
//! context pointer is the `Transport`), the queue calls through the ring's raw handles, the
//! interrupt handlers' shared state (`Send`/`Sync`) and the ISR port.

use crate::{
    abi::{
        self,
        CallbackFn,
        DeviceHandle,
        OwnedVq,
        RawVq,
        TransportOps,
        VqParams,
        VqRequest,
        MAX_VQS, //
    },
    indirect::IndirectPool,
    iobar,
    irq::{
        ConfigCb,
        IrqShared,
        Irqs,
        MSIX_CONFIG_VECTOR, //
    },
    regs::{
        self,
        Bar0, //
    },
    split,
};
use core::ffi::c_void;
use kernel::{
    alloc::kvec::PushError,
    device::Bound,
    io::Io,
    new_mutex, pci,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc, Mutex,
    },
};

/// Alignment of the used ring of a legacy queue (`VIRTIO_PCI_VRING_ALIGN`), as the ring
/// contract takes it.
// CAST: 4096 fits in a `u32`; checked at build time by the conversion below.
const VRING_ALIGN: u32 = {
    assert!(split::VRING_ALIGN <= u32::MAX as usize);
    split::VRING_ALIGN as u32
};

/// Queues probed at most when counting a device's queues for the log.
const MAX_QUEUES: u16 = 64;

/// Resets the device: write 0 to `STATUS`, then read it back, which flushes the write and
/// waits for the reset to complete (`vp_legacy_set_status()` / `vp_reset()`); returns what
/// was read back (0, or all ones from a function that is gone).
pub(crate) fn reset(bar: &Bar0<'_>) -> regs::STATUS {
    bar.write_reg(regs::STATUS::RESET);
    bar.read(regs::STATUS)
}

/// Updates the device status with `f` (read, then write: the bits already set stay).
pub(crate) fn update_status(bar: &Bar0<'_>, f: impl FnOnce(regs::STATUS) -> regs::STATUS) {
    bar.update(regs::STATUS, f);
}

/// Counts the queues the device has (the first index whose size reads 0 ends them), and
/// checks that each size makes a valid ring.
pub(crate) fn count_queues(pdev: &pci::Device, bar: &Bar0<'_>) -> u16 {
    let mut n = 0;
    while n < MAX_QUEUES {
        bar.write_reg(regs::QUEUE_SEL::from_raw(n));
        let num = bar.read(regs::QUEUE_NUM).into_raw();
        if num == 0 {
            break;
        }
        match abi::vring_size(num.into(), VRING_ALIGN) {
            Ok(size) => dev_dbg!(pdev, "queue {}: {} entries, {} bytes\n", n, num, size),
            Err(_) => dev_warn!(pdev, "queue {}: invalid size {}\n", n, num),
        }
        n += 1;
    }
    n
}

/// One created queue: the indirect tables and the ring memory outlive the queue (field
/// order; dropping the queue gives back the tables of buffers still in flight).
struct QueueSlot {
    vq: OwnedVq,
    _indirect: Option<KBox<IndirectPool>>,
    _ring: abi::LegacyBuf<u8>,
    index: u16,
}

/// Everything one legacy function needs to serve its device driver.
///
/// Drop order (field order): the interrupt handlers go before the BAR their ISR port reads.
/// The device I/O of teardown is [`Transport::shutdown`]'s, which the PCI driver's `unbind`
/// (or a failed probe) runs; dropping only releases.
///
/// # Invariants
///
/// - `shared` is the state of the handlers in `irqs`.
/// - `msix` is whether MSI-X was enabled on the function when `irqs` was set up (it does not
///   change while the transport exists), and `config_off` follows it.
pub(crate) struct Transport<'bound> {
    pdev: &'bound pci::Device<Bound>,
    host_features: u32,
    negotiated: Atomic<u64>,
    msix: bool,
    config_off: usize,
    shared: Arc<IrqShared>,
    irqs: Irqs,
    queues: Pin<KBox<Mutex<KVec<QueueSlot>>>>,
    bar: Bar0<'bound>,
}

/// The operations table every handle of this transport points to.
pub(crate) static OPS: TransportOps = TransportOps {
    header: abi::AbiHeader::for_type::<TransportOps>(),
    finalize_features: op_finalize_features,
    config_read: op_config_read,
    config_write: op_config_write,
    find_vqs: op_find_vqs,
    del_vqs: op_del_vqs,
    add_status: op_add_status,
    reset: op_reset,
};

impl<'bound> Transport<'bound> {
    /// Allocates the interrupts (MSI-X, else INTx) and prepares the function for its driver.
    ///
    /// # Errors
    ///
    /// The errors of interrupt allocation and registration, `ENOMEM`.
    pub(crate) fn new(
        pdev: &'bound pci::Device<Bound>,
        bar: Bar0<'bound>,
        name: &'static CStr,
        nqueues: u16,
    ) -> Result<Self> {
        let host_features = bar.read(regs::HOST_FEATURES).into_raw();
        let (shared, irqs) = Irqs::request(pdev, &bar, name, nqueues)?;
        // The device moves its configuration from 0x14 to 0x18 when MSI-X is enabled in its
        // PCI capability, whatever the driver meant to use: follow the PCI core's state.
        let msix = iobar::msix_enabled(pdev);
        if msix != irqs.is_msix() {
            dev_err!(
                pdev,
                "MSI-X is {}abled against the interrupt mode\n",
                if msix { "en" } else { "dis" }
            );
            return Err(EIO);
        }
        Ok(Self {
            pdev,
            bar,
            host_features,
            negotiated: Atomic::new(0),
            msix,
            config_off: if msix {
                regs::CONFIG_OFFSET_MSIX
            } else {
                regs::CONFIG_OFFSET_NO_MSIX
            },
            shared,
            irqs,
            queues: KBox::pin_init(new_mutex!(KVec::new()), GFP_KERNEL)?,
        })
    }

    /// The handle to publish for this function.
    pub(crate) fn handle(self: Pin<&Self>, device_type: u32) -> DeviceHandle {
        DeviceHandle::new(
            device_type,
            self.host_features.into(),
            &OPS,
            core::ptr::from_ref(self.get_ref()).cast(),
        )
    }

    /// Whether MSI-X is in use.
    pub(crate) fn msix(&self) -> bool {
        self.msix
    }

    /// How interrupts are delivered, for the log.
    pub(crate) fn irq_mode(&self) -> &'static str {
        self.irqs.mode()
    }

    /// Waits for running interrupt handlers.
    fn synchronize(&self) {
        self.irqs.synchronize(self.pdev);
    }

    /// Resets the device (write 0, read back) and waits for running handlers.
    pub(crate) fn reset(&self) {
        // The status reads back 0 after a reset; all ones, from a function that is gone.
        if !self.shared.is_gone() && reset(&self.bar).is_all_ones() {
            self.check_gone();
        }
        self.synchronize();
    }

    /// After a register read returned all ones: if the function is gone (surprise removal),
    /// marks every queue broken, which wakes their drivers, and returns true.  Process
    /// context, without the queue lock.
    pub(crate) fn check_gone(&self) -> bool {
        if !self.shared.confirm_gone() {
            return false;
        }
        // Under the lock: no queue is being destroyed meanwhile.
        for slot in self.queues.lock().iter() {
            slot.vq.mark_broken();
        }
        true
    }

    /// Acknowledges the device again after a reset (ACKNOWLEDGE, DRIVER): the state the
    /// transport hands a function to a driver in, so that the next driver to bind goes
    /// through the whole status sequence, as after C's `virtio_dev_remove()` and
    /// `virtio_dev_probe()`.  A reset also forgets the MSI-X configuration vector: the next
    /// `find_vqs` routes it again.  Drivers reset the device through [`TransportOps::reset`]
    /// and [`TransportOps::del_vqs`] (QEMU resets the whole device when a queue address is
    /// cleared), so both end here.
    fn reacknowledge(&self) {
        update_status(&self.bar, |s| s.with_acknowledge(true).with_driver(true));
    }

    /// Routes configuration changes to the MSI-X configuration vector (the device forgets it
    /// on reset); a read-back of NO_VECTOR means the device could not
    /// (`vp_legacy_config_vector()`).
    fn route_config(&self) -> Result {
        if self.msix() {
            if !regs::set_config_vector(&self.bar, MSIX_CONFIG_VECTOR) {
                // NO_VECTOR is also all ones: a function that is gone reads it too.
                if self.shared.confirm_gone() {
                    return Err(ENODEV);
                }
                dev_err!(self.pdev, "the device refused the configuration vector\n");
                return Err(EBUSY);
            }
        }
        Ok(())
    }

    fn finalize_features(&self, driver: u64) -> u64 {
        let negotiated = negotiate(self.host_features, driver, abi::ring_features());
        self.bar
            .write_reg(regs::GUEST_FEATURES::from_raw(negotiated));
        self.negotiated.store(negotiated.into(), Relaxed);
        negotiated.into()
    }

    fn config_read(&self, off: u32, width: u32) -> Result<u32> {
        if self.shared.is_gone() {
            return Err(ENODEV);
        }
        let off = self.config_off + usize::try_from(off)?;
        // The BAR length bounds the configuration; `try_read*` checks it at run time.
        let (val, all_ones) = match width {
            1 => (self.bar.try_read8(off).map(u32::from)?, u32::from(u8::MAX)),
            2 => (
                self.bar.try_read16(off).map(u32::from)?,
                u32::from(u16::MAX),
            ),
            4 => (self.bar.try_read32(off)?, u32::MAX),
            _ => return Err(EINVAL),
        };
        // All ones may be a value; from a function that is gone it is not one.
        if val == all_ones && self.check_gone() {
            return Err(ENODEV);
        }
        Ok(val)
    }

    fn config_write(&self, off: u32, width: u32, val: u32) -> Result {
        // Nobody reads it any more (the removal was logged once).
        if self.shared.is_gone() {
            return Ok(());
        }
        let off = self.config_off + usize::try_from(off)?;
        match width {
            1 => self.bar.try_write8(u8::try_from(val)?, off),
            2 => self.bar.try_write16(u16::try_from(val)?, off),
            4 => self.bar.try_write32(val, off),
            _ => Err(EINVAL),
        }
    }

    /// Creates one queue (`setup_vq()` in `virtio_pci_legacy.c`).
    fn setup_vq(&self, req: &VqRequest) -> Result<QueueSlot> {
        let index = req.index;
        if usize::from(index) >= MAX_VQS {
            return Err(EINVAL);
        }
        if self.shared.is_gone() {
            return Err(ENODEV);
        }
        self.bar.write_reg(regs::QUEUE_SEL::from_raw(index));
        let num = self.bar.read(regs::QUEUE_NUM).into_raw();
        let active = self.bar.read(regs::QUEUE_PFN).into_raw();
        // A function that is gone reads all ones everywhere (the queue lock is held: the
        // caller breaks nothing, it has published nothing yet).
        if num == u16::MAX && active == u32::MAX && self.shared.confirm_gone() {
            return Err(ENODEV);
        }
        if num == 0 {
            return Err(ENOENT);
        }
        if active != 0 {
            dev_err!(self.pdev, "queue {} is already active\n", index);
            return Err(EBUSY);
        }
        let size = abi::vring_size(num.into(), VRING_ALIGN)?;
        let ring = abi::LegacyBuf::<u8>::zeroed_slice(self.pdev.as_ref(), size, GFP_KERNEL)?;
        // A legacy device bypasses any IOMMU: it gets the guest-physical address, never the
        // DMA handle (`common/legacy_mem.rs`).
        let addr = ring.device_addr();
        let pfn = u32::try_from(addr >> regs::QUEUE_ADDR_SHIFT).map_err(|_| {
            dev_err!(
                self.pdev,
                "queue {} at {:#x}: legacy virtio-pci cannot reach memory above 16 TiB\n",
                index,
                addr
            );
            E2BIG
        })?;
        // Indirect tables of this queue (see `indirect.rs`).
        let indirect =
            if self.negotiated.load(Relaxed) & (1u64 << split::VIRTIO_RING_F_INDIRECT_DESC) != 0 {
                Some(KBox::new(IndirectPool::new(num.into())?, GFP_KERNEL)?)
            } else {
                None
            };
        let (indirect_alloc, indirect_free, indirect_ctx) = match &indirect {
            Some(pool) => {
                let (alloc, free, ctx) = pool.callbacks();
                (Some(alloc), Some(free), ctx)
            }
            None => (None, None, core::ptr::null()),
        };
        let params = VqParams {
            header: abi::AbiHeader::for_type::<VqParams>(),
            index,
            _reserved: 0,
            num: num.into(),
            features: self.negotiated.load(Relaxed),
            ring: ring.as_mut_ptr().cast(),
            ring_dma: addr,
            ring_len: size,
            notify: Some(op_notify),
            notify_ctx: core::ptr::from_ref(self).cast(),
            callback: req.callback,
            callback_ctx: req.ctx,
            indirect_alloc,
            indirect_free,
            indirect_ctx,
        };
        // SAFETY: The ring memory and the indirect pool live in the returned slot, after the
        // queue (field order), and the boxed pool does not move;
        // `self` (the notify context) outlives every queue, deleted by `del_vqs` at the
        // latest when the device is unbound; the driver's callback contract is `find_vqs`'s.
        let vq = unsafe { OwnedVq::new(&params)? };
        // From here on, an error must deactivate the queue before its memory goes.
        self.bar.write_reg(regs::QUEUE_PFN::from_raw(pfn));
        #[cfg(virtio_rs_kunit)]
        crate::testing::record_ring(
            index,
            ring.dma_handle(),
            addr,
            u64::from(pfn) << regs::QUEUE_ADDR_SHIFT,
        );
        if let Some(vector) = self.irqs.queue_vector(index) {
            if !regs::set_queue_vector(&self.bar, vector) {
                self.bar.write_reg(regs::QUEUE_PFN::from_raw(0));
                return Err(EBUSY);
            }
        }
        Ok(QueueSlot {
            vq,
            _indirect: indirect,
            _ring: ring,
            index,
        })
    }

    fn find_vqs(
        &self,
        reqs: &[VqRequest],
        out: &mut [*mut RawVq],
        config: Option<CallbackFn>,
        config_ctx: *const c_void,
    ) -> Result {
        if reqs.len() > MAX_VQS || out.len() != reqs.len() {
            return Err(EINVAL);
        }
        let mut queues = self.queues.lock();
        if !queues.is_empty() {
            return Err(EBUSY);
        }
        // Everything that needs memory is allocated before the device is programmed: an error
        // after a queue address was written would otherwise leave the device using freed
        // memory (and the queue active, so that every later `find_vqs` fails with EBUSY).
        let mut slots = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
        let cb = config
            .map(|f| KBox::new(ConfigCb::new(f, config_ctx), GFP_KERNEL))
            .transpose()?;
        self.route_config()?;
        for req in reqs {
            // `setup_vq` deactivates its own queue when it fails after programming it.
            let slot = match self.setup_vq(req) {
                Ok(slot) => slot,
                Err(e) => {
                    dev_err!(self.pdev, "queue {}: setup failed: {:?}\n", req.index, e);
                    drop(queues);
                    self.teardown(slots);
                    return Err(e);
                }
            };
            // Cannot fail: the capacity was reserved; if it did, the queue is deactivated.
            if let Err(PushError(slot)) = slots.push_within_capacity(slot) {
                drop(queues);
                self.deactivate(slot);
                self.teardown(slots);
                return Err(ENOMEM);
            }
        }
        // Test flavour: an error after every queue was programmed.
        #[cfg(virtio_rs_kunit)]
        if crate::testing::fail_find_vqs() {
            dev_err!(
                self.pdev,
                "find_vqs fails after programming the queues (test switch)\n"
            );
            drop(queues);
            self.teardown(slots);
            return Err(ENOMEM);
        }
        let cb = cb.map_or(core::ptr::null_mut(), KBox::into_raw);
        // Publish to the interrupt handlers last, when everything exists; handlers find
        // queues by their device index (below `MAX_VQS`, checked by `setup_vq`).
        for (slot, o) in slots.iter().zip(out.iter_mut()) {
            *o = slot.vq.as_raw();
            // The queue lives in `self.queues` until `del_vqs` unpublishes and synchronizes.
            self.shared.publish_queue(slot.index, slot.vq.as_raw());
        }
        // The box is live until `del_vqs` unpublishes it and synchronizes.
        self.shared.publish_config(cb);
        *queues = slots;
        Ok(())
    }

    /// Deactivates and destroys queues (`del_vq()`); writing PFN 0 resets the whole device in
    /// QEMU, which is why drivers reset the device before deleting their queues.
    fn teardown(&self, slots: KVec<QueueSlot>) {
        for slot in slots {
            self.deactivate(slot);
        }
    }

    /// Deactivates one queue, then frees it and its memory.
    fn deactivate(&self, slot: QueueSlot) {
        self.bar.write_reg(regs::QUEUE_SEL::from_raw(slot.index));
        if self.msix() {
            // No vector: whatever the device reads back.
            let _ = regs::set_queue_vector(&self.bar, regs::NO_VECTOR);
            // Flush the vector write (and any pending interrupt) with an ISR read.
            let _ = self.bar.read(regs::ISR);
        }
        self.bar.write_reg(regs::QUEUE_PFN::from_raw(0));
        drop(slot);
    }

    fn del_vqs(&self) {
        let slots = {
            let mut queues = self.queues.lock();
            core::mem::take(&mut *queues)
        };
        let cb = self.shared.unpublish();
        // No handler uses the queues or the callback once this returns.
        self.synchronize();
        if !cb.is_null() {
            // SAFETY: `cb` came from `KBox::into_raw` in `find_vqs` and is no longer
            // published; handlers are synchronized.
            drop(unsafe { KBox::from_raw(cb) });
        }
        self.teardown(slots);
    }

    /// Adds the status bits `bits` a driver asks for (`abi::STATUS_DRIVER_OK`,
    /// `abi::STATUS_FAILED`).
    pub(crate) fn add_status(&self, bits: u8) {
        update_status(&self.bar, |s| s.with_bits(bits));
    }

    /// Quiesces the function when the transport lets it go (the PCI driver's `unbind`, or a
    /// probe that fails after creating the transport): the driver is gone, its queues must be
    /// too.  The device I/O of teardown; dropping the transport afterwards only releases.
    pub(crate) fn shutdown(&self) {
        self.reset();
        if !self.queues.lock().is_empty() {
            dev_warn!(
                self.pdev,
                "device driver left its queues behind; deleting them\n"
            );
            self.del_vqs();
        }
        if self.msix() {
            // No vector: whatever the device reads back.
            let _ = regs::set_config_vector(&self.bar, regs::NO_VECTOR);
        }
    }
}

/// Legacy feature negotiation: the bits the device offers (`host`), the driver asks for
/// (`driver`) and this stack implements, which are the device-specific bits (0-27) and the
/// ring's transport bits (`ring`: INDIRECT_DESC, EVENT_IDX); never bit 30 (BAD_FEATURE,
/// which QEMU offers legacy drivers to catch those that acknowledge features blindly).
///
/// Unlike C's virtio core, which keeps every transport bit the device offers unless the
/// driver clears it in `validate`, a driver here gets a ring feature only when it asks for
/// it.  For INDIRECT_DESC that matters: with it, adding a buffer of several elements
/// allocates a table, which a driver that adds buffers under a lock reclaim may take must be
/// able to refuse (the C balloon clears INDIRECT_DESC for that reason).
pub(crate) fn negotiate(host: u32, driver: u64, ring: u64) -> u32 {
    let supported = ((1u64 << regs::F_TRANSPORT_START) - 1) | ring;
    let negotiated = u64::from(host) & driver & supported & !(1u64 << regs::F_BAD_FEATURE);
    // CAST: a subset of `host`, which is 32 bits.
    negotiated as u32
}

/// Recovers the transport from an operations context.
///
/// # Safety
///
/// `ctx` must be the context of a live [`Transport`] (from [`Transport::handle`]).
unsafe fn transport<'a>(ctx: *const c_void) -> &'a Transport<'a> {
    // SAFETY: The caller's guarantee; handles are only published for pinned transports that
    // outlive them.
    unsafe { &*ctx.cast::<Transport<'a>>() }
}

/// Notifies the device of new buffers in queue `index` (`vp_notify()`).
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_notify(ctx: *const c_void, index: u16) -> bool {
    // SAFETY: `ctx` is the transport that created the queue, alive while it exists.
    let t = unsafe { transport(ctx) };
    // A function that is gone takes no notification: the ring marks the queue broken.
    if t.shared.is_gone() {
        return false;
    }
    #[cfg(virtio_rs_kunit)]
    if crate::testing::drop_kick() {
        // A device that stopped taking buffers: the kick is "sent" but never arrives.
        return true;
    }
    // A 16-bit write of the queue index (QEMU's ioeventfd matches exactly that).
    t.bar.write_reg(regs::QUEUE_NOTIFY::from_raw(index));
    true
}

/// [`TransportOps::finalize_features`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_finalize_features(ctx: *const c_void, driver: u64) -> u64 {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    unsafe { transport(ctx) }.finalize_features(driver)
}

/// [`TransportOps::config_read`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_config_read(
    ctx: *const c_void,
    off: u32,
    width: u32,
    val: *mut u32,
) -> i32 {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    match unsafe { transport(ctx) }.config_read(off, width) {
        Ok(v) => {
            // SAFETY: `val` is valid for a write of a `u32` (this function's contract, as
            // `TransportOps::config_read` documents it).
            unsafe { val.write(v) };
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// [`TransportOps::config_write`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_config_write(ctx: *const c_void, off: u32, width: u32, val: u32) -> i32 {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    match unsafe { transport(ctx) }.config_write(off, width, val) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// [`TransportOps::find_vqs`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_find_vqs(
    ctx: *const c_void,
    n: u32,
    reqs: *const VqRequest,
    vqs: *mut *mut RawVq,
    config: Option<CallbackFn>,
    config_ctx: *const c_void,
) -> i32 {
    let Ok(n) = usize::try_from(n) else {
        return EINVAL.to_errno();
    };
    if n > MAX_VQS || reqs.is_null() || vqs.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY:
    // - `reqs` points to `n` initialized requests, not written during the call (this
    //   function's contract; null was refused above).
    // - `vqs` points to room for `n` queue pointers that nothing else accesses during the
    //   call (same contract).
    let (reqs, out) = unsafe {
        (
            core::slice::from_raw_parts(reqs, n),
            core::slice::from_raw_parts_mut(vqs, n),
        )
    };
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    match unsafe { transport(ctx) }.find_vqs(reqs, out, config, config_ctx) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// [`TransportOps::del_vqs`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_del_vqs(ctx: *const c_void) {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    let t = unsafe { transport(ctx) };
    t.del_vqs();
    t.reacknowledge();
}

/// [`TransportOps::add_status`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_add_status(ctx: *const c_void, bits: u8) {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    unsafe { transport(ctx) }.add_status(bits)
}

/// [`TransportOps::reset`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_reset(ctx: *const c_void) {
    // SAFETY: `ctx` is the context of a live transport (this function's contract, which
    // `TransportOps` passes on from the handle).
    let t = unsafe { transport(ctx) };
    t.reset();
    t.reacknowledge();
}
