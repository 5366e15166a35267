// SPDX-License-Identifier: GPL-2.0

//! Legacy (virtio 0.9.5) PCI transport.
//!
//! The Rust counterpart of `drivers/virtio/virtio_pci_legacy.c` with
//! `virtio_pci_legacy_dev.c`: it drives the legacy register block in I/O-port BAR0 of
//! transitional virtio functions (vendor 0x1af4, devices 0x1000-0x103f, revision 0) and
//! publishes each function as an auxiliary device named after its virtio device type
//! (`virtio_pci_rs.balloon.<n>`), so that the matching virtio-rs device driver is
//! autoloaded.  It never hands a device to a C virtio driver: it does not register on the
//! virtio bus.
//!
//! To make it probe in QEMU, add a legacy device, e.g.
//! `-device virtio-balloon-pci,disable-modern=on`, and move the function from the built-in C
//! driver: `echo virtio_pci_rs > /sys/bus/pci/devices/<bdf>/driver_override`, unbind it from
//! `virtio-pci`, and write its address to `/sys/bus/pci/drivers_probe`.
//!
//! `unsafe` here: one block, setting the DMA masks at probe.  The rest of the crate's `unsafe`
//! is in `iobar.rs`, `transport.rs`, `indirect.rs` and the KUnit suite `kunit.rs`; `regs.rs`
//! and `testing.rs` have none.

use core::pin::Pin;
use kernel::{
    auxiliary,
    device::Core,
    dma::DmaMask,
    io::Io,
    pci,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    types::ForLt,
};

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_pci_rs/indirect.rs"]
mod indirect;

#[path = "virtio_pci_rs/iobar.rs"]
mod iobar;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_pci_rs/kunit.rs"]
mod kunit;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_pci_rs/testing.rs"]
mod testing;

// The complete register map, documented in one place; not every register is used yet.
#[allow(dead_code)]
#[path = "virtio_pci_rs/regs.rs"]
mod regs;

#[path = "virtio_pci_rs/transport.rs"]
mod transport;

use abi::DeviceHandle;
use iobar::{
    EnabledDevice,
    IoBar, //
};
use regs::status;
use transport::Transport;

/// Name of this module, the prefix of the auxiliary devices it creates.
const MODULE_NAME: &CStr = <LocalModule as kernel::ModuleMetadata>::NAME;

/// BAR0 with its fixed registers known at build time.
pub(crate) type Bar0<'a> = IoBar<'a, { regs::BAR0_MIN_SIZE }>;

/// Transitional virtio devices: the legacy interface (virtio 1.x section 4.1.2.1).
const TRANSITIONAL_DEVICE_IDS: core::ops::RangeInclusive<u16> = 0x1000..=0x103f;

/// `PCI_ANY_ID`: matches any device id.
const PCI_ANY_ID: u32 = !0;

/// Queues probed at most when counting a device's queues for the log.
const MAX_QUEUES: u16 = 64;

/// Id of the next auxiliary device (unique among the devices this module creates).
static NEXT_AUX_ID: Atomic<u32> = Atomic::new(0);

/// Per-function state.
///
/// Drop order (field order): the auxiliary device goes first, which unbinds the device
/// driver (it deletes its queues); then the handle it used; then the transport resets the
/// device, frees the interrupts and unmaps the BAR; last, the PCI function is disabled.
struct VirtioPciDevice<'bound> {
    /// The auxiliary device the device driver binds to.
    _aux: auxiliary::Registration<'bound, ForLt!(usize)>,
    /// What the device driver reads through the registration data.
    _handle: Pin<KBox<DeviceHandle>>,
    /// The transport operations behind the handle.
    transport: Pin<KBox<Transport<'bound>>>,
    /// The enabled PCI function (outlives the BAR mapping).
    _enabled: EnabledDevice<'bound>,
}

/// Resets the device: write 0 to `STATUS`, then read it back, which flushes the write and
/// waits for the reset to complete (`vp_legacy_set_status()` / `vp_reset()`); returns what
/// was read back (0, or all ones from a function that is gone).
pub(crate) fn reset(bar: &Bar0<'_>) -> u8 {
    bar.write_reg(regs::STATUS::from_raw(0));
    bar.read(regs::STATUS).into_raw()
}

/// Adds `bits` to the device status.
pub(crate) fn add_status(bar: &Bar0<'_>, bits: u8) {
    let old = bar.read(regs::STATUS).into_raw();
    bar.write_reg(regs::STATUS::from_raw(old | bits));
}

/// Counts the queues the device has (the first index whose size reads 0 ends them), and
/// checks that each size makes a valid ring.
fn count_queues(pdev: &pci::Device, bar: &Bar0<'_>) -> u16 {
    let mut n = 0;
    while n < MAX_QUEUES {
        bar.write_reg(regs::QUEUE_SEL::from_raw(n));
        let num = bar.read(regs::QUEUE_NUM).into_raw();
        if num == 0 {
            break;
        }
        match abi::vring_size(num.into(), regs::VRING_ALIGN) {
            Ok(size) => dev_dbg!(pdev, "queue {}: {} entries, {} bytes\n", n, num, size),
            Err(_) => dev_warn!(pdev, "queue {}: invalid size {}\n", n, num),
        }
        n += 1;
    }
    n
}

kernel::pci_device_table!(
    PCI_TABLE,
    MODULE_PCI_TABLE,
    <VirtioPciDriver as pci::Driver>::IdInfo,
    [(
        // The legacy devices are 0x1000-0x103f; the table cannot express a range, so probe
        // filters (as `vp_legacy_probe()` does).
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, PCI_ANY_ID),
        ()
    )]
);

/// The legacy virtio PCI driver.
struct VirtioPciDriver;

impl pci::Driver for VirtioPciDriver {
    type IdInfo = ();
    type Data<'bound> = VirtioPciDevice<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: &'bound Self::IdInfo,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let device_id = pdev.device_id();
        if !TRANSITIONAL_DEVICE_IDS.contains(&device_id) || pdev.revision_id() != 0 {
            // Modern-only functions and revisions we do not know are not ours.
            return Err(ENODEV);
        }
        // The virtio device type is the PCI subsystem device id (legacy interface).
        let device_type = u32::from(pdev.subsystem_device_id());
        let Some(name) = abi::device_name(device_type) else {
            dev_info!(
                pdev,
                "virtio device type {} is not supported\n",
                device_type
            );
            return Err(ENODEV);
        };

        let enabled = EnabledDevice::new(pdev)?;
        // SAFETY: No DMA allocation or mapping of this device runs concurrently: probe is
        // serialized and nothing has been allocated yet.  As `vp_legacy_probe()`: 64-bit
        // streaming DMA, but ring memory below 2^44 so that its PFN fits QUEUE_PFN (32 bits).
        unsafe {
            use kernel::dma::Device as _;
            pdev.dma_set_mask(DmaMask::new::<64>())?;
            pdev.dma_set_coherent_mask(DmaMask::new::<{ 32 + regs::QUEUE_ADDR_SHIFT }>())?;
        }
        let bar = Bar0::new_ioport(pdev, 0, MODULE_NAME)?;

        let _ = reset(&bar);
        add_status(&bar, status::ACKNOWLEDGE);
        let host_features = bar.read(regs::HOST_FEATURES).into_raw();
        let queues = count_queues(pdev, &bar);
        pdev.set_master();
        add_status(&bar, status::DRIVER);
        let bar_len = bar.maxsize();

        let transport = KBox::pin(Transport::new(pdev, bar, MODULE_NAME, queues)?, GFP_KERNEL)?;
        let handle = KBox::pin(transport.as_ref().handle(device_type), GFP_KERNEL)?;
        let id = NEXT_AUX_ID.fetch_add(1, Relaxed);
        let aux = auxiliary::Registration::<ForLt!(usize)>::new(
            pdev.as_ref(),
            name,
            id,
            MODULE_NAME,
            handle.as_ref().as_registration_data(),
        )
        .inspect_err(|_| transport.add_status(status::FAILED))?;

        dev_info!(
            pdev,
            "legacy virtio {} (type {}), {} queues, features {:#010x}, BAR0 {} bytes, {}\n",
            name,
            device_type,
            queues,
            host_features,
            bar_len,
            transport.irq_mode()
        );

        Ok(VirtioPciDevice {
            _aux: aux,
            _handle: handle,
            transport,
            _enabled: enabled,
        })
    }

    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        // Before the device driver goes (when the data drops): a function that was
        // surprise-removed gets its queues broken first, so that the driver's teardown waits
        // for nothing (`virtio_pci_remove()` breaks the device in the same case).
        if !iobar::device_present(pdev) {
            this.transport.check_gone();
        }
    }
}

/// The module: the PCI driver registration, with the contract check first.
#[pin_data]
struct VirtioPciModule {
    #[pin]
    _driver: kernel::driver::Registration<pci::Adapter<VirtioPciDriver>>,
    /// The fault-injection switches of the test flavour.
    #[cfg(virtio_rs_kunit)]
    _switches: testing::TestSwitches,
}

impl kernel::InPlaceModule for VirtioPciModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pin_init::pin_init_scope(move || {
            abi::check_ring_abi()?;
            Ok(try_pin_init!(Self {
                _driver <- kernel::driver::Registration::new(MODULE_NAME, module),
                #[cfg(virtio_rs_kunit)]
                _switches: testing::TestSwitches::new()?,
            }))
        })
    }
}

module! {
    type: VirtioPciModule,
    name: "virtio_pci_rs",
    authors: ["The virtio-rs developers"],
    description: "Legacy virtio PCI transport (Rust)",
    license: "GPL",
    imports_ns: ["VIRTIO_RS"],
}
