// SPDX-License-Identifier: GPL-2.0

//! The device side of a legacy split ring, as a model for tests and the benchmark.
//!
//! What QEMU's virtqueue code does with a split ring (virtio 1.x 2.7, legacy layout): take
//! heads from the avail ring, walk their descriptor chains (following an indirect table),
//! write used elements and publish the used index, and decide whether to interrupt
//! (`virtio_split_should_notify()`).  One model, over any [`RingMem`], for every test of the
//! ring: the host crate in `tests/host` (its memory model), the KUnit suites (DMA memory) and
//! the ring micro-benchmark of the bench flavour.  It uses `core::` only and takes the field
//! offsets from [`Layout`], so the layout arithmetic lives in the ring core alone.
//!
//! The model reads and writes through the checked accessors of [`RingMem`]: it is the other
//! side, not the code under test, and a test may hand it any value.

#![deny(unsafe_code)]

use crate::split::{
    vring_need_event,
    Barrier,
    Layout,
    RingMem,
    DESC_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY, //
};

/// A descriptor as the device reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// The next descriptor of the chain (with `VRING_DESC_F_NEXT`).
    pub next: u16,
}

impl Desc {
    /// All ones: what a test reads for a descriptor outside its table (never a valid one).
    pub const INVALID: Desc = Desc {
        addr: u64::MAX,
        len: u32::MAX,
        flags: u16::MAX,
        next: u16::MAX,
    };

    /// Reads descriptor `i` of `table` (the ring's descriptor table or an indirect table);
    /// `None` when it lies beyond the memory.
    pub fn read<M: RingMem>(table: &M, i: u16) -> Option<Desc> {
        let off = usize::from(i).checked_mul(DESC_SIZE)?;
        if off.checked_add(DESC_SIZE)? > table.len() {
            return None;
        }
        // `RingMem` has no 64-bit read: the address is two 32-bit halves in guest order.
        let (first, second) = (table.read_u32(off), table.read_u32(off + 4));
        let (lo, hi) = if cfg!(target_endian = "little") {
            (first, second)
        } else {
            (second, first)
        };
        Some(Desc {
            addr: u64::from(lo) | (u64::from(hi) << 32),
            len: table.read_u32(off + 8),
            flags: table.read_u16(off + 12),
            next: table.read_u16(off + 14),
        })
    }

    /// Whether the device may write the buffer.
    pub fn writable(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE != 0
    }
}

/// Why the device model refused a chain (a driver bug, in an honest run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor index or table address was out of range.
    BadDescriptor,
    /// The chain was longer than allowed or looped.
    TooLong,
    /// A readable element followed a writable one.
    ReadAfterWrite,
    /// Indirect flag misuse (nested, combined with NEXT, or bad table length).
    BadIndirect,
}

/// Where the descriptors of a buffer are, as its head descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// In the ring's descriptor table, from the head on.
    Direct(u16),
    /// In an indirect table of `count` descriptors at `addr`.
    Indirect {
        /// The table's address.
        addr: u64,
        /// Descriptors in the table.
        count: u16,
    },
}

/// Calls `f` on each descriptor of the chain that starts at `first` in `table` (of `entries`
/// descriptors), in order, as QEMU walks it: every link must stay in the table, the chain may
/// not be longer than the table, a readable element may not follow a writable one, and an
/// indirect flag inside is refused.
///
/// # Errors
///
/// The [`ChainError`] of the first rule broken, or the first error of `f`.
pub fn walk_chain<M: RingMem>(
    table: &M,
    first: u16,
    entries: u16,
    mut f: impl FnMut(&Desc) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let mut i = first;
    let mut writing = false;
    for _ in 0..entries {
        if i >= entries {
            return Err(ChainError::BadDescriptor);
        }
        let d = Desc::read(table, i).ok_or(ChainError::BadDescriptor)?;
        if d.flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::BadIndirect);
        }
        if d.writable() {
            writing = true;
        } else if writing {
            return Err(ChainError::ReadAfterWrite);
        }
        f(&d)?;
        if d.flags & VRING_DESC_F_NEXT == 0 {
            return Ok(());
        }
        i = d.next;
    }
    Err(ChainError::TooLong)
}

/// The device's state of one split ring: its indexes and its last interrupt decision.
///
/// The ring memory is passed to each call (the device's own view of it), so that a test can
/// hold the model and the memory side by side.
#[derive(Debug)]
pub struct DeviceRing {
    /// The ring layout.
    layout: Layout,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    event_idx: bool,
    /// Next avail index to take.
    last_avail: u16,
    /// The device's used index.
    used_idx: u16,
    /// Used index at the last interrupt decision (QEMU's `signalled_used`).
    signalled: Option<u16>,
}

impl DeviceRing {
    /// A device for `layout`; `event_idx` as negotiated.
    pub fn new(layout: Layout, event_idx: bool) -> Self {
        Self {
            layout,
            event_idx,
            last_avail: 0,
            used_idx: 0,
            signalled: None,
        }
    }

    /// The ring layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// The device's next avail index.
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// The driver's `avail->idx`.
    pub fn avail_idx<M: RingMem>(&self, mem: &M) -> u16 {
        mem.read_u16(self.layout.avail_idx())
    }

    /// The driver's `avail->flags`.
    pub fn avail_flags<M: RingMem>(&self, mem: &M) -> u16 {
        mem.read_u16(self.layout.avail_flags())
    }

    /// The driver's `used_event`.
    pub fn used_event<M: RingMem>(&self, mem: &M) -> u16 {
        mem.read_u16(self.layout.used_event())
    }

    /// Number of avail entries the device has not taken (0 if the driver's index went
    /// backwards, as it does on detach).
    pub fn avail_pending<M: RingMem>(&self, mem: &M) -> u16 {
        let n = self.avail_idx(mem).wrapping_sub(self.last_avail);
        if n > self.layout.num() {
            0
        } else {
            n
        }
    }

    /// Takes the next head from the avail ring (as the driver wrote it, unchecked); `None`
    /// when the driver made nothing new available.
    pub fn pop_head<M: RingMem>(&mut self, mem: &M) -> Option<u16> {
        if self.avail_pending(mem) == 0 {
            return None;
        }
        // Orders the read of `avail->idx` before the read of the entry it publishes.
        mem.barrier(Barrier::Read);
        let slot = self.last_avail & self.layout.mask();
        self.last_avail = self.last_avail.wrapping_add(1);
        Some(mem.read_u16(self.layout.avail_ring(slot)))
    }

    /// Where the descriptors of the buffer at `head` are.
    ///
    /// # Errors
    ///
    /// [`ChainError::BadDescriptor`] for a head outside the table, [`ChainError::BadIndirect`]
    /// for an indirect descriptor that chains on or whose length is not a whole number of at
    /// most `num` descriptors.
    pub fn find_chain<M: RingMem>(&self, mem: &M, head: u16) -> Result<Chain, ChainError> {
        let num = self.layout.num();
        if head >= num {
            return Err(ChainError::BadDescriptor);
        }
        let d = Desc::read(mem, head).ok_or(ChainError::BadDescriptor)?;
        if d.flags & VRING_DESC_F_INDIRECT == 0 {
            return Ok(Chain::Direct(head));
        }
        let whole = d.len != 0 && usize::try_from(d.len).is_ok_and(|l| l % DESC_SIZE == 0);
        if d.flags & VRING_DESC_F_NEXT != 0 || !whole {
            return Err(ChainError::BadIndirect);
        }
        let count = usize::try_from(d.len).map_or(usize::MAX, |l| l / DESC_SIZE);
        match u16::try_from(count) {
            Ok(count) if count <= num => Ok(Chain::Indirect {
                addr: d.addr,
                count,
            }),
            _ => Err(ChainError::BadIndirect),
        }
    }

    /// Calls `f` on each descriptor of a buffer whose chain is in the ring's own table
    /// ([`Chain::Direct`]); see [`walk_chain`].
    ///
    /// # Errors
    ///
    /// As [`walk_chain`].
    pub fn walk_direct<M: RingMem>(
        &self,
        mem: &M,
        head: u16,
        f: impl FnMut(&Desc) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        walk_chain(mem, head, self.layout.num(), f)
    }

    /// Writes used element `{id, len}` at the slot of used index `idx` (not published).
    pub fn write_used_elem<M: RingMem>(&self, mem: &M, idx: u16, id: u32, len: u32) {
        let off = self.layout.used_elem(idx & self.layout.mask());
        mem.write_u32(off, id);
        mem.write_u32(off + 4, len);
    }

    /// Sets and publishes the used index (any value: hostile devices too).
    pub fn set_used_idx<M: RingMem>(&mut self, mem: &M, idx: u16) {
        self.used_idx = idx;
        mem.write_u16(self.layout.used_idx(), idx);
    }

    /// Writes used element `{id, len}` at the next used slot and publishes the used index.
    pub fn push<M: RingMem>(&mut self, mem: &M, id: u32, len: u32) {
        self.write_used_elem(mem, self.used_idx, id, len);
        // Orders the used element before the used index that publishes it.
        mem.barrier(Barrier::Write);
        self.set_used_idx(mem, self.used_idx.wrapping_add(1));
    }

    /// Writes `used->flags` (any value).
    pub fn set_used_flags<M: RingMem>(&self, mem: &M, flags: u16) {
        mem.write_u16(self.layout.used_flags(), flags);
    }

    /// Sets or clears `VRING_USED_F_NO_NOTIFY`.
    pub fn set_no_notify<M: RingMem>(&self, mem: &M, on: bool) {
        self.set_used_flags(mem, if on { VRING_USED_F_NO_NOTIFY } else { 0 });
    }

    /// Writes `avail_event` (any value).
    pub fn set_avail_event<M: RingMem>(&self, mem: &M, idx: u16) {
        mem.write_u16(self.layout.avail_event(), idx);
    }

    /// Interrupt decision after pushing, as QEMU's `virtio_split_should_notify()` (minus
    /// `NOTIFY_ON_EMPTY`): the first decision always interrupts.
    pub fn should_interrupt<M: RingMem>(&mut self, mem: &M) -> bool {
        let new = self.used_idx;
        let old = self.signalled.replace(new);
        if self.event_idx {
            match old {
                None => true,
                Some(old) => vring_need_event(self.used_event(mem), new, old),
            }
        } else {
            self.avail_flags(mem) & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }
}
