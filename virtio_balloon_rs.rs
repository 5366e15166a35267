// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver (legacy device, virtio device type 5).
//!
//! The Rust counterpart of `drivers/virtio/virtio_balloon.c`.  It binds to the auxiliary
//! device `virtio_pci_rs.balloon.<n>` that the virtio-rs legacy PCI transport creates for
//! QEMU's `-device virtio-balloon-pci,disable-modern=on`, and is autoloaded through that
//! device's modalias.

use kernel::{
    auxiliary,
    device::Core,
    prelude::*, //
};

#[path = "common/virtio_rs.rs"]
mod abi;

use abi::DeviceHandle;

/// Per-device state.
struct Balloon {
    /// The device type the transport reported (always the balloon here).
    _device_type: u32,
}

kernel::auxiliary_device_table!(
    AUX_TABLE,
    MODULE_AUX_TABLE,
    <BalloonDriver as auxiliary::Driver>::IdInfo,
    [(
        auxiliary::DeviceId::new(abi::TRANSPORT_MODNAME, c"balloon"),
        ()
    )]
);

/// The balloon driver.
struct BalloonDriver;

impl auxiliary::Driver for BalloonDriver {
    type IdInfo = ();
    type Data<'bound> = Balloon;

    const ID_TABLE: auxiliary::IdTable<Self::IdInfo> = &AUX_TABLE;

    fn probe<'bound>(
        adev: &'bound auxiliary::Device<Core<'_>>,
        _info: &'bound Self::IdInfo,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let handle = DeviceHandle::from_auxiliary(adev).inspect_err(|e| {
            dev_err!(adev, "no usable device handle from the transport ({:?})\n", e);
        })?;
        if handle.device_type != abi::VIRTIO_ID_BALLOON {
            dev_err!(adev, "not a balloon: device type {}\n", handle.device_type);
            return Err(ENODEV);
        }
        dev_info!(
            adev,
            "balloon bound (device features {:#010x})\n",
            handle.host_features
        );
        Ok(Balloon {
            _device_type: handle.device_type,
        })
    }
}

/// The module: the auxiliary driver registration, with the contract check first.
#[pin_data]
struct VirtioBalloonModule {
    #[pin]
    _driver: kernel::driver::Registration<auxiliary::Adapter<BalloonDriver>>,
}

impl kernel::InPlaceModule for VirtioBalloonModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pin_init::pin_init_scope(move || {
            abi::check_ring_abi()?;
            Ok(try_pin_init!(Self {
                _driver <- kernel::driver::Registration::new(
                    <LocalModule as kernel::ModuleMetadata>::NAME,
                    module
                ),
            }))
        })
    }
}

module! {
    type: VirtioBalloonModule,
    name: "virtio_balloon_rs",
    authors: ["The virtio-rs developers"],
    description: "Virtio memory balloon driver for the virtio-rs legacy transport (Rust)",
    license: "GPL",
    imports_ns: ["VIRTIO_RS"],
}
