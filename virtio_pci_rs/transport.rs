// SPDX-License-Identifier: GPL-2.0

//! The transport operations of one legacy function: features, configuration, status, queues
//! and interrupts (`virtio_pci_legacy.c` and `virtio_pci_common.c`).
//!
//! Interrupts are allocated once, at probe, in the order C tries them: MSI-X with a
//! configuration vector and one vector per queue (QEMU `vectors=4` and up for the balloon),
//! else MSI-X with a configuration vector and one vector shared by all queues (QEMU's
//! default `vectors=2`), else the INTx line, shared.  A mode that fails after its vectors
//! were allocated frees them before the next is tried (`vp_del_vqs()` in C), and where the
//! device configuration starts in BAR0 follows whether MSI-X really is enabled.  The handlers
//! are `'static` and find the current queues and configuration callback through atomics in
//! [`IrqShared`]: `find_vqs` publishes them after creating the queues, `del_vqs` clears them
//! and waits for running handlers (`synchronize_irq`) before destroying anything.
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
    iobar::{
        self,
        IsrPort,
        RawIrq,
        RawIrqHandler, //
    },
    regs, Bar0,
};
use core::{
    ffi::c_void,
    ptr::NonNull, //
};
use kernel::{
    alloc::kvec::PushError,
    device::{
        Bound,
        Device, //
    },
    io::Io,
    irq::{
        self,
        IrqReturn, //
    },
    new_mutex,
    pci::{
        self,
        IrqType,
        IrqTypes, //
    },
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc, Mutex,
    },
};

/// Vector of the configuration interrupt when MSI-X is enabled.
const MSIX_CONFIG_VECTOR: u16 = 0;

/// Vector shared by all queues when MSI-X is enabled.
const MSIX_QUEUES_VECTOR: u16 = 1;

/// A configuration-change callback, boxed so that it can be published through one atomic
/// pointer.
struct ConfigCb {
    f: CallbackFn,
    ctx: *const c_void,
}

/// What the interrupt handlers share with the transport.
///
/// # Invariants
///
/// - A non-null `vqs[i]` is a live queue; it is cleared, and the interrupts synchronized,
///   before the queue is destroyed.
/// - A non-null `config` is a `KBox<ConfigCb>` raw pointer whose callback may be called; it is
///   cleared and the interrupts synchronized before the box is freed.
/// - `gone` is only ever set, once the function was found surprise-removed.
pub(crate) struct IrqShared {
    vqs: [Atomic<*mut RawVq>; MAX_VQS],
    config: Atomic<*mut ConfigCb>,
    isr: Option<IsrPort>,
    pdev: ARef<pci::Device>,
    gone: Atomic<bool>,
}

// SAFETY: The raw pointers are only dereferenced under the type invariants; the driver's
// callbacks are safe to call from any context (contract of `TransportOps::find_vqs`).
unsafe impl Send for IrqShared {}
// SAFETY: See `Send`; all fields are atomics or immutable.
unsafe impl Sync for IrqShared {}

impl IrqShared {
    fn new(pdev: &pci::Device<Bound>, isr: Option<IsrPort>) -> Self {
        Self {
            vqs: [const { Atomic::new(core::ptr::null_mut()) }; MAX_VQS],
            config: Atomic::new(core::ptr::null_mut()),
            isr,
            pdev: pdev.into(),
            gone: Atomic::new(false),
        }
    }

    /// Whether the function was found surprise-removed.
    fn is_gone(&self) -> bool {
        self.gone.load(Relaxed)
    }

    /// Called when a register read returned all ones: true if the function is gone (the PCI
    /// core confirms it no longer answers), in which case the first call logs it.  The queues
    /// are the caller's to break.  Any context.
    fn confirm_gone(&self) -> bool {
        if self.is_gone() {
            return true;
        }
        if iobar::device_present(&self.pdev) {
            // All ones was a value, not an absent device.
            return false;
        }
        if !self.gone.xchg(true, Relaxed) {
            dev_err!(
                self.pdev,
                "the device is gone (surprise removal): its queues are broken\n"
            );
        }
        true
    }

    /// Marks every published queue broken, which also runs its driver's callback once (so that
    /// a driver waiting for the device sees it).  From the interrupt handlers, whose queues
    /// are live until cleared and synchronized.
    fn break_published(&self) {
        for slot in &self.vqs {
            if let Some(vq) = NonNull::new(slot.load(Relaxed)) {
                // SAFETY: A published queue is live until cleared and synchronized (invariant).
                unsafe { abi::vq_break_raw(vq) };
            }
        }
    }

    /// Runs the interrupt entry of queue `index`, if published; true if it had work.
    fn queue(&self, index: usize) -> bool {
        match self
            .vqs
            .get(index)
            .map(|slot| slot.load(Relaxed))
            .and_then(NonNull::new)
        {
            // SAFETY: A published queue is live until cleared and synchronized (invariant).
            Some(vq) => unsafe { abi::vq_interrupt_raw(vq) },
            None => false,
        }
    }

    /// Runs the interrupt entry of every published queue; true if one had work.
    fn queues(&self) -> bool {
        let mut handled = false;
        for slot in &self.vqs {
            if let Some(vq) = NonNull::new(slot.load(Relaxed)) {
                // SAFETY: A published queue is live until cleared and synchronized (invariant).
                handled |= unsafe { abi::vq_interrupt_raw(vq) };
            }
        }
        handled
    }

    /// Runs the configuration callback, if one is published.
    fn config(&self) {
        let cb = self.config.load(Relaxed);
        if !cb.is_null() {
            // SAFETY: A published callback box is live until cleared and synchronized
            // (invariant); its callback may run in interrupt context.
            unsafe { ((*cb).f)((*cb).ctx) };
        }
    }
}

/// Handler of the MSI-X configuration vector.
struct ConfigHandler(Arc<IrqShared>);

impl irq::Handler for ConfigHandler {
    fn handle(&self, _dev: &Device<Bound>) -> IrqReturn {
        self.0.config();
        IrqReturn::Handled
    }
}

/// Handler of the MSI-X vector shared by the queues.
struct QueuesHandler(Arc<IrqShared>);

impl irq::Handler for QueuesHandler {
    fn handle(&self, _dev: &Device<Bound>) -> IrqReturn {
        if self.0.queues() {
            IrqReturn::Handled
        } else {
            IrqReturn::None
        }
    }
}

/// Handler of one queue's own MSI-X vector (`vring_interrupt()`).
struct QueueVector {
    shared: Arc<IrqShared>,
    index: usize,
}

impl RawIrqHandler for QueueVector {
    fn handle(&self) -> bool {
        self.shared.queue(self.index)
    }
}

/// Handler of the shared INTx line (`vp_interrupt()`).
struct IntxHandler(Arc<IrqShared>);

impl irq::Handler for IntxHandler {
    fn handle(&self, _dev: &Device<Bound>) -> IrqReturn {
        // Reading ISR acknowledges the interrupt; 0 means it was another device's.
        let isr = self.0.isr.as_ref().map_or(0, |p| p.read());
        if isr == 0 {
            return IrqReturn::None;
        }
        // A function that is gone reads all ones (and raises nothing: another device on the
        // line did).
        if isr == u8::MAX && self.0.confirm_gone() {
            self.0.break_published();
            return IrqReturn::None;
        }
        if isr & regs::ISR_CONFIG != 0 {
            self.0.config();
        }
        self.0.queues();
        IrqReturn::Handled
    }
}

/// The interrupt registrations of a function.
enum Irqs {
    /// MSI-X: a configuration vector and one vector per queue (vector `1 + index`).
    PerQueue {
        config: Pin<KBox<irq::Registration<ConfigHandler>>>,
        queues: KVec<RawIrq<QueueVector>>,
    },
    /// MSI-X: a configuration vector and a vector for all queues.
    MsiX {
        config: Pin<KBox<irq::Registration<ConfigHandler>>>,
        queues: Pin<KBox<irq::Registration<QueuesHandler>>>,
    },
    /// The INTx line, shared with other devices.
    Intx {
        line: Pin<KBox<irq::Registration<IntxHandler>>>,
    },
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
        // Each attempt drops what it requested when it fails; its vectors are freed before the
        // next one (`vp_del_vqs()` between C's attempts): MSI-X still enabled would make the
        // next allocation fail with a warning, and INTx get the MSI-X vector 0.
        let (shared, irqs) = match Self::request_per_queue(pdev, &bar, name, nqueues) {
            Ok(v) => v,
            Err(e) => {
                dev_dbg!(pdev, "no MSI-X vector per queue ({:?})\n", e);
                iobar::free_irq_vectors(pdev);
                match Self::request_msix(pdev, &bar, name) {
                    Ok(v) => v,
                    Err(e) => {
                        iobar::free_irq_vectors(pdev);
                        dev_info!(pdev, "no MSI-X ({:?}), using the INTx line\n", e);
                        Self::request_intx(pdev, &bar, name)?
                    }
                }
            }
        };
        // The device moves its configuration from 0x14 to 0x18 when MSI-X is enabled in its
        // PCI capability, whatever the driver meant to use: follow the PCI core's state.
        let msix = iobar::msix_enabled(pdev);
        if msix == matches!(irqs, Irqs::Intx { .. }) {
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

    /// Requests the MSI-X configuration vector and routes configuration changes to it; a
    /// read-back of NO_VECTOR means the device could not (`vp_legacy_config_vector()`).
    fn request_config<'a>(
        pdev: &'a pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
        vector: pci::IrqVector<'a>,
        shared: &Arc<IrqShared>,
    ) -> Result<Pin<KBox<irq::Registration<ConfigHandler>>>> {
        let config = KBox::pin_init(
            pdev.request_irq(
                vector,
                irq::Flags::TRIGGER_NONE,
                name,
                Ok::<_, Error>(ConfigHandler(shared.clone())),
            ),
            GFP_KERNEL,
        )?;
        bar.write_reg(regs::MSI_CONFIG_VECTOR::from_raw(MSIX_CONFIG_VECTOR));
        if bar.read(regs::MSI_CONFIG_VECTOR).into_raw() == regs::NO_VECTOR {
            return Err(EBUSY);
        }
        Ok(config)
    }

    fn request_per_queue(
        pdev: &'bound pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
        nqueues: u16,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        let nqueues = usize::from(nqueues).min(MAX_VQS);
        if nqueues == 0 {
            return Err(ENODEV);
        }
        // CAST: at most `1 + MAX_VQS` vectors.
        let n = (1 + nqueues) as u32;
        let vecs = pdev.alloc_irq_vectors(n, n, IrqTypes::default().with(IrqType::MsiX))?;
        let shared = Arc::new(IrqShared::new(pdev, None), GFP_KERNEL)?;
        let config = Self::request_config(pdev, bar, name, *vecs.start(), &shared)?;
        let mut queues = KVec::with_capacity(nqueues, GFP_KERNEL)?;
        for index in 0..nqueues {
            // Test flavour: `request_irq()` fails for a queue vector.
            #[cfg(virtio_rs_kunit)]
            if crate::testing::fail_per_queue_vectors() {
                return Err(EBUSY);
            }
            // CAST: at most `MAX_VQS`.
            let vector = 1 + index as u32;
            let handler = QueueVector {
                shared: shared.clone(),
                index,
            };
            queues.push(RawIrq::request(pdev, vector, name, handler)?, GFP_KERNEL)?;
        }
        Ok((shared, Irqs::PerQueue { config, queues }))
    }

    fn request_msix(
        pdev: &'bound pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        let vecs = pdev.alloc_irq_vectors(2, 2, IrqTypes::default().with(IrqType::MsiX))?;
        let shared = Arc::new(IrqShared::new(pdev, None), GFP_KERNEL)?;
        let config = Self::request_config(pdev, bar, name, *vecs.start(), &shared)?;
        // Test flavour: the device reads back NO_VECTOR for the configuration vector.
        #[cfg(virtio_rs_kunit)]
        if crate::testing::fail_shared_vectors() {
            return Err(EBUSY);
        }
        let queues = KBox::pin_init(
            pdev.request_irq(
                *vecs.end(),
                irq::Flags::TRIGGER_NONE,
                name,
                Ok::<_, Error>(QueuesHandler(shared.clone())),
            ),
            GFP_KERNEL,
        )?;
        Ok((shared, Irqs::MsiX { config, queues }))
    }

    fn request_intx(
        pdev: &'bound pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        let vecs = pdev.alloc_irq_vectors(1, 1, IrqTypes::default().with(IrqType::Intx))?;
        // SAFETY: The port is only read by the handler registered below, which the transport
        // drops before the BAR (field order of `Transport`).
        let isr = unsafe { IsrPort::new(bar) };
        let shared = Arc::new(IrqShared::new(pdev, Some(isr)), GFP_KERNEL)?;
        let line = KBox::pin_init(
            pdev.request_irq(
                *vecs.start(),
                irq::Flags::SHARED,
                name,
                Ok::<_, Error>(IntxHandler(shared.clone())),
            ),
            GFP_KERNEL,
        )?;
        Ok((shared, Irqs::Intx { line }))
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
        match self.irqs {
            Irqs::PerQueue { .. } => "MSI-X, one vector per queue",
            Irqs::MsiX { .. } => "MSI-X, one vector for all queues",
            Irqs::Intx { .. } => "INTx",
        }
    }

    /// Waits for running interrupt handlers.
    fn synchronize(&self) {
        let dev: &Device<Bound> = self.pdev.as_ref();
        let res = match &self.irqs {
            Irqs::PerQueue { config, queues } => {
                queues.iter().for_each(RawIrq::synchronize);
                config.synchronize(dev)
            }
            Irqs::MsiX { config, queues } => config
                .synchronize(dev)
                .and_then(|()| queues.synchronize(dev)),
            Irqs::Intx { line } => line.synchronize(dev),
        };
        if let Err(e) = res {
            dev_warn!(self.pdev, "could not synchronize interrupts: {:?}\n", e);
        }
    }

    /// Resets the device (write 0, read back) and waits for running handlers.
    pub(crate) fn reset(&self) {
        // The status reads back 0 after a reset; all ones, from a function that is gone.
        if !self.shared.is_gone() && crate::reset(&self.bar) == u8::MAX {
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
        self.add_status(regs::status::ACKNOWLEDGE | regs::status::DRIVER);
    }

    /// Routes configuration changes to the MSI-X configuration vector (the device forgets it
    /// on reset); a read-back of NO_VECTOR means the device could not
    /// (`vp_legacy_config_vector()`).
    fn route_config(&self) -> Result {
        if self.msix() {
            self.bar
                .write_reg(regs::MSI_CONFIG_VECTOR::from_raw(MSIX_CONFIG_VECTOR));
            if self.bar.read(regs::MSI_CONFIG_VECTOR).into_raw() == regs::NO_VECTOR {
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
        let size = abi::vring_size(num.into(), regs::VRING_ALIGN)?;
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
        let indirect = if self.negotiated.load(Relaxed) & (1u64 << regs::F_INDIRECT_DESC) != 0 {
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
        let vector = match self.irqs {
            Irqs::PerQueue { .. } => Some(1 + index),
            Irqs::MsiX { .. } => Some(MSIX_QUEUES_VECTOR),
            Irqs::Intx { .. } => None,
        };
        if let Some(vector) = vector {
            self.bar.write_reg(regs::MSI_QUEUE_VECTOR::from_raw(vector));
            if self.bar.read(regs::MSI_QUEUE_VECTOR).into_raw() == regs::NO_VECTOR {
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
            .map(|f| KBox::new(ConfigCb { f, ctx: config_ctx }, GFP_KERNEL))
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
            if let Some(shared) = self.shared.vqs.get(usize::from(slot.index)) {
                shared.store(slot.vq.as_raw(), Relaxed);
            }
        }
        // INVARIANT: the box is live until `del_vqs` clears it and synchronizes.
        self.shared.config.store(cb, Relaxed);
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
            self.bar
                .write_reg(regs::MSI_QUEUE_VECTOR::from_raw(regs::NO_VECTOR));
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
        for shared in &self.shared.vqs {
            shared.store(core::ptr::null_mut(), Relaxed);
        }
        let cb = self.shared.config.xchg(core::ptr::null_mut(), Relaxed);
        // No handler uses the queues or the callback once this returns.
        self.synchronize();
        if !cb.is_null() {
            // SAFETY: `cb` came from `KBox::into_raw` in `find_vqs` and is no longer
            // published; handlers are synchronized.
            drop(unsafe { KBox::from_raw(cb) });
        }
        self.teardown(slots);
    }

    /// Adds bits to the device status.
    pub(crate) fn add_status(&self, bits: u8) {
        crate::add_status(&self.bar, bits);
    }

    /// Quiesces the function when the transport lets it go: the driver is gone, its queues
    /// must be too.
    fn shutdown(&self) {
        self.reset();
        if !self.queues.lock().is_empty() {
            dev_warn!(
                self.pdev,
                "device driver left its queues behind; deleting them\n"
            );
            self.del_vqs();
        }
        if self.msix() {
            self.bar
                .write_reg(regs::MSI_CONFIG_VECTOR::from_raw(regs::NO_VECTOR));
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

impl Drop for Transport<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
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
    // SAFETY: `ctx` comes from the handle (contract of `TransportOps`).
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
    // SAFETY: As above.
    match unsafe { transport(ctx) }.config_read(off, width) {
        Ok(v) => {
            // SAFETY: The caller passes a valid out pointer.
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
    // SAFETY: As above.
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
    // SAFETY: The caller passes `n` requests and room for `n` queue pointers.
    let (reqs, out) = unsafe {
        (
            core::slice::from_raw_parts(reqs, n),
            core::slice::from_raw_parts_mut(vqs, n),
        )
    };
    // SAFETY: As above.
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
    // SAFETY: As above.
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
    // SAFETY: As above.
    unsafe { transport(ctx) }.add_status(bits)
}

/// [`TransportOps::reset`].
///
/// # Safety
///
/// `ctx` is the context of a live [`Transport`]; pointer arguments are valid as documented in
/// [`TransportOps`].
unsafe extern "C" fn op_reset(ctx: *const c_void) {
    // SAFETY: As above.
    let t = unsafe { transport(ctx) };
    t.reset();
    t.reacknowledge();
}
