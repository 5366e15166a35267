// SPDX-License-Identifier: GPL-2.0

//! The legacy virtio PCI register map (virtio 0.9.5 section 2.1, "PCI Discovery", and
//! `include/uapi/linux/virtio_pci.h`), all in I/O-port BAR0.
//!
//! Glossary: the *host* is the device, the *guest* the driver; a *PFN* is a guest physical
//! address shifted right by [`QUEUE_ADDR_SHIFT`]; *ISR* is the interrupt status register.
//!
//! No `unsafe`.

use kernel::io::{
    register,
    Io, //
};

use crate::iobar::IoBar;

register! {
    /// Feature bits the device offers (bits 0-31; legacy devices have no more).
    pub(crate) HOST_FEATURES(u32) @ 0x00 {
        /// The offered feature bits.
        31:0 bits;
    }

    /// Feature bits the driver accepted.
    pub(crate) GUEST_FEATURES(u32) @ 0x04 {
        /// The accepted feature bits.
        31:0 bits;
    }

    /// Page frame number of the selected queue's ring; writing 0 resets the whole device in
    /// QEMU.
    pub(crate) QUEUE_PFN(u32) @ 0x08 {
        /// Ring address >> [`QUEUE_ADDR_SHIFT`].
        31:0 pfn;
    }

    /// Size of the selected queue (read-only in legacy; 0 means the queue does not exist).
    pub(crate) QUEUE_NUM(u16) @ 0x0c {
        /// Number of ring entries.
        15:0 num;
    }

    /// Selects the queue that `QUEUE_PFN`, `QUEUE_NUM` and `MSI_QUEUE_VECTOR` refer to.
    pub(crate) QUEUE_SEL(u16) @ 0x0e {
        /// Queue index.
        15:0 index;
    }

    /// Writing a queue index tells the device that the queue has new buffers.
    pub(crate) QUEUE_NOTIFY(u16) @ 0x10 {
        /// Queue index.
        15:0 index;
    }

    /// Device status (virtio spec 2.1); writing 0 resets the device, and it reads back 0
    /// once the reset is complete.
    pub(crate) STATUS(u8) @ 0x12 {
        /// The guest gave up on the device.
        7:7 failed => bool;
        /// Feature negotiation is complete (not used by legacy devices).
        3:3 features_ok => bool;
        /// The driver is ready.
        2:2 driver_ok => bool;
        /// The guest knows how to drive the device.
        1:1 driver => bool;
        /// The guest noticed the device.
        0:0 acknowledge => bool;
    }

    /// Interrupt status; reading it acknowledges the interrupt (INTx).
    pub(crate) ISR(u8) @ 0x13 {
        /// A configuration change happened.
        1:1 config => bool;
        /// A queue has work.
        0:0 queue => bool;
    }

    /// MSI-X vector for configuration changes (only when MSI-X is enabled).
    pub(crate) MSI_CONFIG_VECTOR(u16) @ 0x14 {
        /// Vector index, or [`NO_VECTOR`](super::NO_VECTOR).
        15:0 vector;
    }

    /// MSI-X vector of the selected queue (only when MSI-X is enabled).
    pub(crate) MSI_QUEUE_VECTOR(u16) @ 0x16 {
        /// Vector index, or [`NO_VECTOR`](super::NO_VECTOR).
        15:0 vector;
    }
}

/// Bytes of fixed registers: the device configuration starts here when MSI-X is disabled.
pub(crate) const CONFIG_OFFSET_NO_MSIX: usize = 0x14;

/// Device configuration offset when MSI-X is enabled.
pub(crate) const CONFIG_OFFSET_MSIX: usize = 0x18;

/// Size of BAR0 that every legacy device has (the registers, including the MSI-X ones).
pub(crate) const BAR0_MIN_SIZE: usize = CONFIG_OFFSET_MSIX;

/// Shift from a queue's physical address to the value of `QUEUE_PFN`.
pub(crate) const QUEUE_ADDR_SHIFT: u32 = 12;

/// "No vector" value of the MSI-X vector registers.
pub(crate) const NO_VECTOR: u16 = 0xffff;

/// BAR0 with its fixed registers known at build time.
pub(crate) type Bar0<'a> = IoBar<'a, BAR0_MIN_SIZE>;

/// Routes configuration changes to MSI-X vector `vector` (or none, with [`NO_VECTOR`]);
/// false when the device refused: it reads back [`NO_VECTOR`] (`vp_legacy_config_vector()`).
pub(crate) fn set_config_vector(bar: &Bar0<'_>, vector: u16) -> bool {
    bar.write_reg(MSI_CONFIG_VECTOR::from_raw(vector));
    bar.read(MSI_CONFIG_VECTOR).into_raw() != NO_VECTOR
}

/// Routes the selected queue's interrupts to MSI-X vector `vector` (or none, with
/// [`NO_VECTOR`]); false when the device refused: it reads back [`NO_VECTOR`]
/// (`vp_legacy_queue_vector()`).
pub(crate) fn set_queue_vector(bar: &Bar0<'_>, vector: u16) -> bool {
    bar.write_reg(MSI_QUEUE_VECTOR::from_raw(vector));
    bar.read(MSI_QUEUE_VECTOR).into_raw() != NO_VECTOR
}

// The status bits drivers add through the contract are this register's.
const _: () = assert!(STATUS::DRIVER_OK_MASK == crate::abi::STATUS_DRIVER_OK);
const _: () = assert!(STATUS::FAILED_MASK == crate::abi::STATUS_FAILED);

impl STATUS {
    /// The value that resets the device.
    pub(crate) const RESET: Self = Self::from_raw(0);

    /// What a function that is gone reads (all ones): no device status has every bit.
    pub(crate) fn is_all_ones(self) -> bool {
        self.into_raw() == u8::MAX
    }

    /// This status with the bits of `bits` added (the status bits a driver asks for through
    /// the contract, e.g. `abi::STATUS_DRIVER_OK`).
    pub(crate) fn with_bits(self, bits: u8) -> Self {
        Self::from_raw(self.into_raw() | bits)
    }
}

impl ISR {
    /// What a function that is gone reads (all ones).
    pub(crate) fn is_all_ones(self) -> bool {
        self.into_raw() == u8::MAX
    }

    /// Whether no bit is set: the interrupt was another device's (C tests the whole byte,
    /// `vp_interrupt()`).
    pub(crate) fn is_clear(self) -> bool {
        self.into_raw() == 0
    }
}

/// First transport feature bit (28); bits below are device-specific.
pub(crate) const F_TRANSPORT_START: u32 = 28;

/// Legacy feature bit 30 (`VIRTIO_F_BAD_FEATURE`): offered by QEMU to catch drivers that
/// acknowledge features blindly; never acknowledged.
pub(crate) const F_BAD_FEATURE: u32 = 30;
