// SPDX-License-Identifier: GPL-2.0

//! The legacy virtio PCI register map (virtio 0.9.5 section 2.1, "PCI Discovery", and
//! `include/uapi/linux/virtio_pci.h`), all in I/O-port BAR0.
//!
//! Glossary: the *host* is the device, the *guest* the driver; a *PFN* is a guest physical
//! address shifted right by [`QUEUE_ADDR_SHIFT`]; *ISR* is the interrupt status register.
//!
//! No `unsafe`.

use kernel::io::register;

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

    /// Device status (virtio spec 2.1); writing 0 resets the device.
    pub(crate) STATUS(u8) @ 0x12 {
        /// The status bits, see [`status`](super::status).
        7:0 bits;
    }

    /// Interrupt status; reading it acknowledges the interrupt (INTx).
    pub(crate) ISR(u8) @ 0x13 {
        /// A configuration change happened.
        1:1 config;
        /// A queue has work.
        0:0 queue;
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

/// Alignment of the used ring in a legacy queue.
pub(crate) const VRING_ALIGN: u32 = 4096;

/// "No vector" value of the MSI-X vector registers.
pub(crate) const NO_VECTOR: u16 = 0xffff;

/// Device status bits (virtio spec 2.1).
pub(crate) mod status {
    /// The guest noticed the device.
    pub(crate) const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive the device.
    pub(crate) const DRIVER: u8 = 2;
    /// The driver is ready.
    pub(crate) const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete (not used by legacy devices).
    pub(crate) const FEATURES_OK: u8 = 8;
    /// The guest gave up on the device.
    pub(crate) const FAILED: u8 = 0x80;
}

/// ISR bit: the device configuration changed.
pub(crate) const ISR_CONFIG: u8 = 2;

/// First transport feature bit (28); bits below are device-specific.
pub(crate) const F_TRANSPORT_START: u32 = 28;

/// Transport feature: indirect descriptor tables.
pub(crate) const F_INDIRECT_DESC: u32 = 28;

/// Legacy feature bit 30 (`VIRTIO_F_BAD_FEATURE`): offered by QEMU to catch drivers that
/// acknowledge features blindly; never acknowledged.
pub(crate) const F_BAD_FEATURE: u32 = 30;
