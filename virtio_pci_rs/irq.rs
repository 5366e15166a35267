// SPDX-License-Identifier: GPL-2.0

//! The interrupts of one legacy function (`vp_request_msix_vectors()`, `vp_interrupt()`,
//! `vp_config_changed()` and `vring_interrupt()` of `virtio_pci_common.c`).
//!
//! Interrupts are allocated once, at probe, in the order C tries them: MSI-X with a
//! configuration vector and one vector per queue (QEMU `vectors=4` and up for the balloon),
//! else MSI-X with a configuration vector and one vector shared by all queues (QEMU's
//! default `vectors=2`), else the INTx line, shared.  A mode that fails after its vectors
//! were allocated frees them before the next is tried (`vp_del_vqs()` in C).  The handlers
//! are `'static` and find the current queues and configuration callback through atomics in
//! [`IrqShared`]: the transport publishes them after creating the queues, withdraws them and
//! waits for running handlers ([`Irqs::synchronize`]) before destroying anything.
//!
//! The handlers take no lock.

use crate::{
    abi::{
        self,
        CallbackFn,
        RawVq,
        MAX_VQS, //
    },
    iobar::{
        self,
        IsrPort,
        RawIrq,
        RawIrqHandler, //
    },
    regs::{
        self,
        Bar0, //
    },
};
use core::{
    ffi::c_void,
    ops::RangeInclusive,
    ptr::NonNull, //
};
use kernel::{
    device::{
        Bound,
        Device, //
    },
    irq::{
        self,
        IrqReturn, //
    },
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
        Arc,
    },
};

/// Vector of the configuration interrupt when MSI-X is enabled.
pub(crate) const MSIX_CONFIG_VECTOR: u16 = 0;

/// Vector shared by all queues when MSI-X is enabled.
const MSIX_QUEUES_VECTOR: u16 = 1;

/// A configuration-change callback, boxed so that it can be published through one atomic
/// pointer.
pub(crate) struct ConfigCb {
    f: CallbackFn,
    ctx: *const c_void,
}

impl ConfigCb {
    /// The callback `f` with its context `ctx`.
    pub(crate) fn new(f: CallbackFn, ctx: *const c_void) -> Self {
        Self { f, ctx }
    }
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

    /// Publishes queue `vq` (device index `index`, below [`MAX_VQS`]) to the handlers.
    ///
    /// The caller keeps `vq` live until [`IrqShared::unpublish`] and a synchronization of the
    /// interrupts (the invariant).
    pub(crate) fn publish_queue(&self, index: u16, vq: *mut RawVq) {
        if let Some(slot) = self.vqs.get(usize::from(index)) {
            // INVARIANT: the caller's promise above.
            slot.store(vq, Relaxed);
        }
    }

    /// Publishes the configuration callback box `cb` (null: none) to the handlers.
    ///
    /// `cb` comes from `KBox::into_raw` and stays live until [`IrqShared::unpublish`] and a
    /// synchronization of the interrupts (the invariant).
    pub(crate) fn publish_config(&self, cb: *mut ConfigCb) {
        // INVARIANT: the caller's promise above.
        self.config.store(cb, Relaxed);
    }

    /// Withdraws every queue and the configuration callback from the handlers; returns the
    /// callback box, which the caller frees after synchronizing the interrupts.
    pub(crate) fn unpublish(&self) -> *mut ConfigCb {
        for slot in &self.vqs {
            slot.store(core::ptr::null_mut(), Relaxed);
        }
        self.config.xchg(core::ptr::null_mut(), Relaxed)
    }

    /// Whether the function was found surprise-removed.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Relaxed)
    }

    /// Called when a register read returned all ones: true if the function is gone (the PCI
    /// core confirms it no longer answers), in which case the first call logs it.  The queues
    /// are the caller's to break.  Any context.
    pub(crate) fn confirm_gone(&self) -> bool {
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
        // Reading ISR acknowledges the interrupt; no bit set means it was another device's.
        let Some(isr) = self.0.isr.as_ref().map(IsrPort::read) else {
            return IrqReturn::None;
        };
        if isr.is_clear() {
            return IrqReturn::None;
        }
        // A function that is gone reads all ones (and raises nothing: another device on the
        // line did).
        if isr.is_all_ones() && self.0.confirm_gone() {
            self.0.break_published();
            return IrqReturn::None;
        }
        if isr.config() {
            self.0.config();
        }
        // As `vp_interrupt()`: every queue is polled whatever `isr.queue()` says (a queue's
        // work is found in its used ring).
        self.0.queues();
        IrqReturn::Handled
    }
}

/// The interrupt registrations of a function.
pub(crate) struct Irqs(Mode);

/// How a function's interrupts are delivered, with their registrations.
enum Mode {
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

impl Irqs {
    /// Allocates and requests the interrupts of a function with `nqueues` queues: MSI-X with
    /// a vector per queue, else MSI-X with one vector for all queues, else INTx.
    ///
    /// # Errors
    ///
    /// The errors of the INTx allocation and registration (the last resort), `ENOMEM`.
    pub(crate) fn request(
        pdev: &pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
        nqueues: u16,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        // Each attempt drops what it requested when it fails; its vectors are freed before the
        // next one (`vp_del_vqs()` between C's attempts): MSI-X still enabled would make the
        // next allocation fail with a warning, and INTx get the MSI-X vector 0.
        match Self::request_per_queue(pdev, bar, name, nqueues) {
            Ok(v) => Ok(v),
            Err(e) => {
                dev_dbg!(pdev, "no MSI-X vector per queue ({:?})\n", e);
                iobar::free_irq_vectors(pdev);
                match Self::request_msix(pdev, bar, name) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        iobar::free_irq_vectors(pdev);
                        dev_info!(pdev, "no MSI-X ({:?}), using the INTx line\n", e);
                        Self::request_intx(pdev, bar, name)
                    }
                }
            }
        }
    }

    /// Allocates exactly `n` interrupt vectors of type `ty`, and the state their handlers
    /// share (with the ISR port for the INTx line).
    fn alloc_vectors<'a>(
        pdev: &'a pci::Device<Bound>,
        n: u32,
        ty: IrqType,
        isr: Option<IsrPort>,
    ) -> Result<(RangeInclusive<pci::IrqVector<'a>>, Arc<IrqShared>)> {
        let vecs = pdev.alloc_irq_vectors(n, n, IrqTypes::default().with(ty))?;
        let shared = Arc::new(IrqShared::new(pdev, isr), GFP_KERNEL)?;
        Ok((vecs, shared))
    }

    /// Requests `vector` with `flags` for `handler`, the registration pinned in a box.
    fn request_line<'a, H: irq::Handler + 'static>(
        pdev: &'a pci::Device<Bound>,
        vector: pci::IrqVector<'a>,
        flags: irq::Flags,
        name: &'static CStr,
        handler: H,
    ) -> Result<Pin<KBox<irq::Registration<H>>>> {
        KBox::pin_init(
            pdev.request_irq(vector, flags, name, Ok::<_, Error>(handler)),
            GFP_KERNEL,
        )
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
        let config = Self::request_line(
            pdev,
            vector,
            irq::Flags::TRIGGER_NONE,
            name,
            ConfigHandler(shared.clone()),
        )?;
        if !regs::set_config_vector(bar, MSIX_CONFIG_VECTOR) {
            return Err(EBUSY);
        }
        Ok(config)
    }

    fn request_per_queue(
        pdev: &pci::Device<Bound>,
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
        let (vecs, shared) = Self::alloc_vectors(pdev, n, IrqType::MsiX, None)?;
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
        Ok((shared, Irqs(Mode::PerQueue { config, queues })))
    }

    fn request_msix(
        pdev: &pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        let (vecs, shared) = Self::alloc_vectors(pdev, 2, IrqType::MsiX, None)?;
        let config = Self::request_config(pdev, bar, name, *vecs.start(), &shared)?;
        // Test flavour: the device reads back NO_VECTOR for the configuration vector.
        #[cfg(virtio_rs_kunit)]
        if crate::testing::fail_shared_vectors() {
            return Err(EBUSY);
        }
        let queues = Self::request_line(
            pdev,
            *vecs.end(),
            irq::Flags::TRIGGER_NONE,
            name,
            QueuesHandler(shared.clone()),
        )?;
        Ok((shared, Irqs(Mode::MsiX { config, queues })))
    }

    fn request_intx(
        pdev: &pci::Device<Bound>,
        bar: &Bar0<'_>,
        name: &'static CStr,
    ) -> Result<(Arc<IrqShared>, Irqs)> {
        // SAFETY: The port is only read by the handler registered below, which the transport
        // drops before the BAR (field order of `Transport`).
        let isr = unsafe { IsrPort::new(bar) };
        let (vecs, shared) = Self::alloc_vectors(pdev, 1, IrqType::Intx, Some(isr))?;
        let line = Self::request_line(
            pdev,
            *vecs.start(),
            irq::Flags::SHARED,
            name,
            IntxHandler(shared.clone()),
        )?;
        Ok((shared, Irqs(Mode::Intx { line })))
    }

    /// Whether these are MSI-X vectors (the INTx line otherwise).
    pub(crate) fn is_msix(&self) -> bool {
        !matches!(self.0, Mode::Intx { .. })
    }

    /// The MSI-X vector of queue `index`, `None` for INTx.
    pub(crate) fn queue_vector(&self, index: u16) -> Option<u16> {
        match self.0 {
            Mode::PerQueue { .. } => Some(1 + index),
            Mode::MsiX { .. } => Some(MSIX_QUEUES_VECTOR),
            Mode::Intx { .. } => None,
        }
    }

    /// How interrupts are delivered, for the log.
    pub(crate) fn mode(&self) -> &'static str {
        match self.0 {
            Mode::PerQueue { .. } => "MSI-X, one vector per queue",
            Mode::MsiX { .. } => "MSI-X, one vector for all queues",
            Mode::Intx { .. } => "INTx",
        }
    }

    /// Waits for running interrupt handlers of `pdev`.
    pub(crate) fn synchronize(&self, pdev: &pci::Device<Bound>) {
        let dev: &Device<Bound> = pdev.as_ref();
        let res = match &self.0 {
            Mode::PerQueue { config, queues } => {
                queues.iter().for_each(RawIrq::synchronize);
                config.synchronize(dev)
            }
            Mode::MsiX { config, queues } => config
                .synchronize(dev)
                .and_then(|()| queues.synchronize(dev)),
            Mode::Intx { line } => line.synchronize(dev),
        };
        if let Err(e) = res {
            dev_warn!(pdev, "could not synchronize interrupts: {:?}\n", e);
        }
    }
}
