// SPDX-License-Identifier: GPL-2.0

//! The constants of the legacy split ring protocol (virtio 1.x 2.7, "Legacy Interface:
//! Virtqueue Layout"; `include/uapi/linux/virtio_ring.h`), defined once.
//!
//! The ring core re-exports them; the PCI transport includes this file alone, for the feature
//! bits, the descriptor size and the alignment, without the rest of the core.

/// Descriptor flag: the chain continues in the descriptor named by `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (an indirect table).
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Used ring flag: the device asks not to be notified of new available buffers (advisory).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Avail ring flag: the driver asks not to be interrupted for used buffers (advisory).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event` and `avail_event` replace the suppression flags.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Alignment of the used ring in the legacy PCI layout (`VIRTIO_PCI_VRING_ALIGN`).
pub const VRING_ALIGN: usize = 4096;
/// Largest queue size a legacy device can report (the size register is 16 bits wide and the
/// size must be a power of two).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Size in bytes of one descriptor: `{ u64 addr, u32 len, u16 flags, u16 next }`.
pub const DESC_SIZE: usize = 16;
