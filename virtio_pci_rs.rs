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

use core::{
    cell::Cell,
    pin::Pin, //
};
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

// The ring's protocol constants (descriptor size, flags, feature bits, alignment), defined
// once, in the ring's `spec.rs`; the test flavour has the whole ring core (its layout) as
// `split`, which re-exports them.
#[cfg(not(virtio_rs_kunit))]
#[path = "virtio_ring_rs/spec.rs"]
pub mod split;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_ring_rs/core.rs"]
pub mod split;

// Test-only: the ring's device model, which the KUnit suite plays.
#[cfg(virtio_rs_kunit)]
#[path = "virtio_ring_rs/device.rs"]
pub mod device;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_pci_rs/testing.rs"]
mod testing;

#[path = "virtio_pci_rs/irq.rs"]
mod irq;

#[path = "virtio_pci_rs/regs.rs"]
mod regs;

#[path = "virtio_pci_rs/transport.rs"]
mod transport;

use abi::DeviceHandle;
use iobar::EnabledDevice;
use regs::Bar0;
use transport::Transport;

/// Name of this module, the prefix of the auxiliary devices it creates.
const MODULE_NAME: &CStr = <LocalModule as kernel::ModuleMetadata>::NAME;

/// Transitional virtio devices: the legacy interface (virtio 1.x section 4.1.2.1).
const TRANSITIONAL_DEVICE_IDS: core::ops::RangeInclusive<u16> = 0x1000..=0x103f;

/// `PCI_ANY_ID`: matches any device id.
const PCI_ANY_ID: u32 = !0;

/// Id of the next auxiliary device (unique among the devices this module creates).
static NEXT_AUX_ID: Atomic<u32> = Atomic::new(0);

/// The registration of the auxiliary device a device driver binds to.
type AuxRegistration<'bound> = auxiliary::Registration<'bound, ForLt!(usize)>;

/// Per-function state.
///
/// Teardown in the C order (`virtio_pci_remove()`): `unbind` removes the auxiliary device
/// first, which unbinds the device driver (it deletes its queues), then does the transport's
/// device I/O ([`Transport::shutdown`]: reset, leftover queues, configuration vector).  The
/// drop then only releases, in field order: the handle the driver used, the transport
/// (interrupts, BAR mapping), last the enabled PCI function.
struct VirtioPciDevice<'bound> {
    /// The auxiliary device the device driver binds to; taken (removed) by `unbind`.
    aux: Cell<Option<AuxRegistration<'bound>>>,
    /// What the device driver reads through the registration data.
    _handle: Pin<KBox<DeviceHandle>>,
    /// The transport operations behind the handle.
    transport: Pin<KBox<Transport<'bound>>>,
    /// The enabled PCI function (outlives the BAR mapping).
    _enabled: EnabledDevice<'bound>,
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

        let _ = transport::reset(&bar);
        transport::update_status(&bar, |s| s.with_acknowledge(true));
        let host_features = bar.read(regs::HOST_FEATURES).into_raw();
        let queues = transport::count_queues(pdev, &bar);
        pdev.set_master();
        transport::update_status(&bar, |s| s.with_driver(true));
        let bar_len = bar.maxsize();

        let transport = KBox::pin(Transport::new(pdev, bar, MODULE_NAME, queues)?, GFP_KERNEL)?;
        // From here on, a failed probe quiesces the function as `unbind` would.
        let handle = KBox::pin(transport.as_ref().handle(device_type), GFP_KERNEL)
            .inspect_err(|_| transport.shutdown())?;
        let id = NEXT_AUX_ID.fetch_add(1, Relaxed);
        let aux = AuxRegistration::new(
            pdev.as_ref(),
            name,
            id,
            MODULE_NAME,
            handle.as_ref().as_registration_data(),
        )
        .inspect_err(|_| {
            transport.add_status(abi::STATUS_FAILED);
            transport.shutdown();
        })?;

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
            aux: Cell::new(Some(aux)),
            _handle: handle,
            transport,
            _enabled: enabled,
        })
    }

    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        // Before the device driver goes: a function that was surprise-removed gets its queues
        // broken first, so that the driver's teardown waits for nothing (`virtio_pci_remove()`
        // breaks the device in the same case).
        if !iobar::device_present(pdev) {
            this.transport.check_gone();
        }
        // The device driver goes (`unregister_virtio_device()`), then the transport quiesces
        // the function.
        drop(this.aux.take());
        this.transport.shutdown();
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
