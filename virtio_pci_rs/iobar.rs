// SPDX-License-Identifier: GPL-2.0

//! Raw PCI glue the Rust PCI abstraction does not offer yet: enabling I/O decoding and mapping
//! an I/O-port BAR.
//!
//! `kernel::pci::Bar` maps memory BARs only (it reads through `readl()`), and
//! `pci::Device::enable_device_mem()` enables memory decoding only.  The legacy virtio
//! interface lives in I/O-port BAR0, so this module provides the two missing pieces:
//! [`EnabledDevice`] (`pci_enable_device()` / `pci_disable_device()`) and [`IoBar`], an
//! [`Io`] backend over `pci_iomap()` and `ioread*()`/`iowrite*()`, which handle port I/O
//! cookies and MMIO alike.
//!
//! Holds the `unsafe` of PCI enable/disable and of port and MMIO access.  It is not the crate's
//! only `unsafe`: `transport.rs` has the C-ABI operations and interrupt paths it hands the
//! shared contract and the ring, `indirect.rs` the indirect table allocator the ring calls, the
//! root the DMA mask setup, and `kunit.rs` the test's device.

use core::ffi::c_void;
use kernel::{
    bindings,
    device::{
        self,
        Bound,
        Core, //
    },
    io::{
        Io,
        IoCapable,
        IoKnownSize, //
    },
    pci,
    prelude::*,
};

/// Returns the C `struct pci_dev` behind `pdev`.
fn raw<Ctx: device::DeviceContext>(pdev: &pci::Device<Ctx>) -> *mut bindings::pci_dev {
    // CAST: `pci::Device` is `#[repr(transparent)]` over `Opaque<bindings::pci_dev>`, itself
    // transparent over the C struct, so the two pointers are the same.
    core::ptr::from_ref(pdev)
        .cast::<bindings::pci_dev>()
        .cast_mut()
}

/// Frees the interrupt vectors allocated on `pdev` and disables MSI-X or MSI
/// (`pci_free_irq_vectors()`), so that the next `alloc_irq_vectors()` may pick another kind.
///
/// The vectors of `pci::Device::alloc_irq_vectors()` are otherwise freed only at unbind (a
/// device-managed action, which then finds nothing left to free): a second allocation while
/// MSI-X is still enabled fails with a warning (`WARN_ON_ONCE(dev->msix_enabled)`), and an
/// INTx "allocation" would hand out the MSI-X vector 0.
///
/// The caller must have freed every interrupt it requested on those vectors.
pub(crate) fn free_irq_vectors(pdev: &pci::Device<Bound>) {
    // SAFETY: `raw(pdev)` is a valid, bound `struct pci_dev`; no interrupt is requested on its
    // vectors any more (the caller's duty, documented above); freeing twice is a no-op.
    unsafe { bindings::pci_free_irq_vectors(raw(pdev)) }
}

/// Whether MSI-X is enabled on `pdev` (`pdev->msix_enabled`): what decides, for the device,
/// where its configuration starts in a legacy BAR0.
pub(crate) fn msix_enabled(pdev: &pci::Device<Bound>) -> bool {
    // SAFETY: `raw(pdev)` is a valid `struct pci_dev`; the bit changes only when the driver
    // allocates or frees vectors, which it does not do concurrently with this read.
    unsafe { (*raw(pdev)).msix_enabled() != 0 }
}

/// Whether `pdev` still answers in PCI configuration space (`pci_device_is_present()`): false
/// once it was surprise-removed.  Any context.
pub(crate) fn device_present(pdev: &pci::Device) -> bool {
    // Test flavour: a surprise-removed function is not present.
    #[cfg(virtio_rs_kunit)]
    if crate::testing::gone() {
        return false;
    }
    // SAFETY: `raw(pdev)` is a valid `struct pci_dev`; the call reads the vendor id under
    // `pci_lock`, a raw spinlock taken with interrupts saved.
    unsafe { bindings::pci_device_is_present(raw(pdev)) }
}

/// A PCI function whose I/O and memory decoding is enabled; disabled again on drop.
///
/// # Invariants
///
/// `pci_enable_device()` succeeded on `pdev` and is balanced by exactly one
/// `pci_disable_device()` in `Drop`.
pub(crate) struct EnabledDevice<'a> {
    pdev: &'a pci::Device<Bound>,
}

impl<'a> EnabledDevice<'a> {
    /// Enables I/O and memory decoding of `pdev` (`pci_enable_device()`).
    ///
    /// # Errors
    ///
    /// The error of `pci_enable_device()`, e.g. `EINVAL` or `EIO`.
    pub(crate) fn new(pdev: &'a pci::Device<Core<'_>>) -> Result<Self> {
        let pdev: &'a pci::Device<Bound> = pdev;
        // SAFETY: `raw(pdev)` is a valid `struct pci_dev`, and the `Core` context proves that
        // the device lock is held, as probe requires.
        kernel::error::to_result(unsafe { bindings::pci_enable_device(raw(pdev)) })?;
        // INVARIANT: the device was just enabled.
        Ok(Self { pdev })
    }
}

impl Drop for EnabledDevice<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, the device was enabled by `Self::new`.
        unsafe { bindings::pci_disable_device(raw(self.pdev)) };
    }
}

/// An I/O-port BAR mapped with `pci_iomap()` and accessed with `ioread*()`/`iowrite*()`.
///
/// `SIZE` is the part of the BAR known at build time (the fixed registers): accesses below it
/// are checked at build time, the rest (the device-specific configuration) at run time
/// against the real length of the BAR.
///
/// # Invariants
///
/// - The region of BAR `bar` of `pdev` is requested, and `addr` is the cookie `pci_iomap()`
///   returned for its first `len` bytes; both are released in `Drop` and nowhere else.
/// - `len >= SIZE`.
pub(crate) struct IoBar<'a, const SIZE: usize> {
    pdev: &'a pci::Device<Bound>,
    bar: i32,
    addr: usize,
    len: usize,
}

impl<'a, const SIZE: usize> IoBar<'a, SIZE> {
    /// Requests and maps I/O-port BAR `bar` of `pdev`, which must hold at least `SIZE` bytes.
    ///
    /// # Errors
    ///
    /// - `ENODEV` if the BAR is not an I/O-port BAR, or is shorter than `SIZE`;
    /// - `EBUSY` if another driver holds the region;
    /// - `ENOMEM` if it cannot be mapped.
    pub(crate) fn new_ioport(
        pdev: &'a pci::Device<Bound>,
        bar: u8,
        name: &'static CStr,
    ) -> Result<Self> {
        let len = usize::try_from(pdev.resource_len(bar.into())?).map_err(|_| ENODEV)?;
        let pdevp = raw(pdev);
        // SAFETY: `pdevp` is a valid `struct pci_dev`, and the resources of a bound device do
        // not change while it is bound.
        let resources = unsafe { &(*pdevp).resource };
        let flags = resources.get(usize::from(bar)).map_or(0, |r| r.flags);
        // CAST: `IORESOURCE_IO` is a flag of the C `unsigned long` flags field.
        if flags & bindings::IORESOURCE_IO as kernel::ffi::c_ulong == 0 || len < SIZE {
            dev_err!(
                pdev.as_ref(),
                "BAR{} is not an I/O-port BAR of at least {} bytes (flags {:#x}, length {})\n",
                bar,
                SIZE,
                flags,
                len
            );
            return Err(ENODEV);
        }
        let bar = i32::from(bar);
        // SAFETY: `pdevp` is a valid, enabled `struct pci_dev`; `name` is a NUL-terminated
        // string that lives forever, as the resource keeps a pointer to it.
        kernel::error::to_result(unsafe {
            bindings::pci_request_region(pdevp, bar, name.as_char_ptr())
        })?;
        // SAFETY: As above; the region is ours now.
        let cookie = unsafe { bindings::pci_iomap(pdevp, bar, 0) };
        if cookie.is_null() {
            // SAFETY: The region was requested just above.
            unsafe { bindings::pci_release_region(pdevp, bar) };
            return Err(ENOMEM);
        }
        // INVARIANT: the region is requested and `cookie` maps all `len >= SIZE` bytes of it.
        Ok(Self {
            pdev,
            bar,
            // CAST: `Io` represents addresses as `usize`.
            addr: cookie as usize,
            len,
        })
    }
}

impl<const SIZE: usize> Drop for IoBar<'_, SIZE> {
    fn drop(&mut self) {
        let pdevp = raw(self.pdev);
        // SAFETY: By the type invariant, `addr` came from `pci_iomap()` on this device and the
        // region was requested; both are released exactly once, here.
        unsafe {
            bindings::pci_iounmap(pdevp, self.addr as *mut c_void);
            bindings::pci_release_region(pdevp, self.bar);
        }
    }
}

impl<const SIZE: usize> Io for IoBar<'_, SIZE> {
    fn addr(&self) -> usize {
        self.addr
    }

    fn maxsize(&self) -> usize {
        self.len
    }
}

impl<const SIZE: usize> IoKnownSize for IoBar<'_, SIZE> {
    const MIN_SIZE: usize = SIZE;
}

/// Implements [`IoCapable`] for one access width through `ioread*()`/`iowrite*()`.
macro_rules! impl_iobar_io_capable {
    ($ty:ty, $read:ident, $write:ident) => {
        impl<const SIZE: usize> IoCapable<$ty> for IoBar<'_, SIZE> {
            unsafe fn io_read(&self, address: usize) -> $ty {
                // Test flavour: a surprise-removed function reads all ones.
                #[cfg(virtio_rs_kunit)]
                if crate::testing::gone() {
                    return <$ty>::MAX;
                }
                // SAFETY: The caller guarantees that `address` is within the mapping, which is
                // valid by the type invariant.
                let val = unsafe { bindings::$read(address as *const c_void) };
                // CAST: `ioread8/16()` return the value zero-extended to `unsigned int`.
                val as $ty
            }

            unsafe fn io_write(&self, value: $ty, address: usize) {
                // Test flavour: writes to a surprise-removed function go nowhere.
                #[cfg(virtio_rs_kunit)]
                if crate::testing::gone() {
                    return;
                }
                // SAFETY: As for `io_read`.
                unsafe { bindings::$write(value, address as *mut c_void) }
            }
        }
    };
}

impl_iobar_io_capable!(u8, ioread8, iowrite8);
impl_iobar_io_capable!(u16, ioread16, iowrite16);
impl_iobar_io_capable!(u32, ioread32, iowrite32);

/// The legacy ISR register, readable from an interrupt handler that cannot borrow the BAR.
///
/// # Invariants
///
/// `addr` is the ISR register inside a live [`IoBar`] mapping, for as long as the value is
/// used (guaranteed by the creator, see [`IsrPort::new`]).
pub(crate) struct IsrPort {
    addr: usize,
}

impl IsrPort {
    /// Offset of the ISR register in the legacy register block.
    const OFFSET: usize = 0x13;

    /// The ISR register of `bar`.
    ///
    /// # Safety
    ///
    /// The value must not be used after `bar` is dropped.
    pub(crate) unsafe fn new<const SIZE: usize>(bar: &IoBar<'_, SIZE>) -> Self {
        const { assert!(Self::OFFSET < SIZE) };
        // INVARIANT: the register lies inside the mapping (asserted above); the caller keeps
        // the mapping alive.
        Self {
            addr: bar.addr + Self::OFFSET,
        }
    }

    /// Reads (and so acknowledges) the interrupt status.
    pub(crate) fn read(&self) -> u8 {
        // Test flavour: a surprise-removed function reads all ones.
        #[cfg(virtio_rs_kunit)]
        if crate::testing::gone() {
            return u8::MAX;
        }
        // SAFETY: `addr` is a register inside a live mapping (type invariant).
        let val = unsafe { bindings::ioread8(self.addr as *const c_void) };
        // CAST: `ioread8()` returns the byte zero-extended.
        val as u8
    }
}

/// What a [`RawIrq`] runs in hard-IRQ context; returns whether the interrupt was ours.
pub(crate) trait RawIrqHandler: Send + Sync + 'static {
    /// Handles one interrupt.
    fn handle(&self) -> bool;
}

/// An MSI-X vector's interrupt, requested with `request_threaded_irq()` because the safe PCI
/// API can name only the first and the last vector of an allocation; freed on drop.
///
/// # Invariants
///
/// `irq` was requested with the address of `handler` as its cookie and [`raw_irq_handler`]
/// for `H`; it is freed exactly once, in `Drop`, before `handler` is.
pub(crate) struct RawIrq<H: RawIrqHandler> {
    irq: u32,
    handler: Pin<KBox<H>>,
}

impl<H: RawIrqHandler> RawIrq<H> {
    /// Requests vector `vector` of the vectors allocated on `pdev`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the vector is not allocated, `ENOMEM`, or the error of
    /// `request_threaded_irq()`.
    pub(crate) fn request(
        pdev: &pci::Device<Bound>,
        vector: u32,
        name: &'static CStr,
        handler: H,
    ) -> Result<Self> {
        // SAFETY: `raw(pdev)` is a valid, bound `struct pci_dev`.
        let irq = unsafe { bindings::pci_irq_vector(raw(pdev), vector) };
        let irq = u32::try_from(irq).map_err(|_| EINVAL)?;
        let handler = KBox::pin(handler, GFP_KERNEL)?;
        let cookie = core::ptr::from_ref(handler.as_ref().get_ref())
            .cast::<c_void>()
            .cast_mut();
        // SAFETY: `raw_irq_handler::<H>` matches `irq_handler_t`; the cookie points to the
        // pinned handler, which outlives the request (freed after `free_irq()` in `Drop`);
        // `name` lives forever.
        kernel::error::to_result(unsafe {
            bindings::request_threaded_irq(
                irq,
                Some(raw_irq_handler::<H>),
                None,
                0,
                name.as_char_ptr(),
                cookie,
            )
        })?;
        // INVARIANT: requested just above with this cookie.
        Ok(Self { irq, handler })
    }

    /// Waits for a running handler of this interrupt.
    pub(crate) fn synchronize(&self) {
        // SAFETY: `irq` is requested (type invariant).
        unsafe { bindings::synchronize_irq(self.irq) }
    }
}

impl<H: RawIrqHandler> Drop for RawIrq<H> {
    fn drop(&mut self) {
        let cookie = core::ptr::from_ref(self.handler.as_ref().get_ref())
            .cast::<c_void>()
            .cast_mut();
        // SAFETY: Requested with this cookie (type invariant); `free_irq()` waits for a
        // running handler, so the handler is unused when it is dropped next.
        unsafe { bindings::free_irq(self.irq, cookie) };
    }
}

/// The C-ABI handler of a [`RawIrq`].
///
/// # Safety
///
/// `cookie` must be the address of a live `H` (the cookie [`RawIrq::request`] registered).
unsafe extern "C" fn raw_irq_handler<H: RawIrqHandler>(
    _irq: kernel::ffi::c_int,
    cookie: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: The caller passes the registered cookie, live until `free_irq()` returned.
    if unsafe { &*cookie.cast::<H>() }.handle() {
        bindings::irqreturn_IRQ_HANDLED
    } else {
        bindings::irqreturn_IRQ_NONE
    }
}
