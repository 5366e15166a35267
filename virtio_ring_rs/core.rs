// SPDX-License-Identifier: GPL-2.0

//! Driver side of a legacy virtio split ring, as pure logic.
//!
//! This is the part of `drivers/virtio/virtio_ring.c` (the split layout, not in-order, not
//! packed) that needs no kernel service: the descriptor free list, the free-running 16-bit
//! indexes, the notification and interrupt suppression arithmetic (`VIRTIO_RING_F_EVENT_IDX`),
//! indirect tables (`VIRTIO_RING_F_INDIRECT_DESC`), and the validation of everything the
//! device writes. The same file is built into `virtio_ring_rs.ko` and into the host crate in
//! `tests/host`, where it runs under `cargo test` and a fuzzer that plays a hostile device.
//!
//! Protocol references: virtio 1.x "Split Virtqueues" and "Legacy Interface: Virtqueue
//! Layout" (2.7, 2.7.2), `include/uapi/linux/virtio_ring.h`.
//!
//! The ring memory and indirect tables are reached only through [`RingMem`], which also
//! provides the memory barriers; the kernel implements it over DMA-coherent memory.
//!
//! The core is safe Rust but for one type: `View`, the ring memory once checked to cover
//! the layout, reads and writes ring fields through `RingMem`'s `_unchecked` accessors, at
//! offsets the layout computes with indexes masked below the queue size.  Bounds checks on
//! every field access made the ring cycle 25% slower (docs/BENCHMARKS.md, "Ring cycle").  The
//! host crate's memory asserts the bounds and alignment of every access, so its tests and
//! the fuzzer check that argument.
//!
//! # Trust boundary
//!
//! The device may write anything into the used ring at any time. The driver keeps its own
//! copy of every value it publishes (avail index and flags, each descriptor's flags and
//! chain link, per-head state) and never reads device-visible driver memory back. Each used
//! entry is checked against that copy before it is believed: the id must name a head that is
//! in flight, and the used index may not run ahead of the buffers the device actually owns.
//! The first violation marks the ring broken (as `BAD_RING` does in C); a broken ring hands
//! nothing more out of the used ring, and [`SplitRing::detach_unused`] still returns every
//! buffer the driver gave away.
//!
//! A used length beyond the writable part of the chain is not a violation: the driver gets
//! the writable length instead (it never learns of bytes the buffer cannot hold), and the
//! ring counts it ([`SplitRing::clamped_lens`]).  Linux once made that fatal and reverted it,
//! because real devices report the whole length they processed, device-readable part
//! included; breaking their queues for a number the driver can bound itself helps nobody.
//!
//! # Differences from the C code
//!
//! - The used index advance is validated (C does not); the used length is clamped to the
//!   chain's writable length and counted (C passes it on unchecked).
//! - Chains are freed by walking the driver's shadow flags, not the descriptor table.
//! - With `EVENT_IDX`, [`SplitRing::disable_cb`] writes `used_event = last_used - 1` (an
//!   event the device can only reach by lapping the whole 16-bit index space) instead of C's
//!   "hack" of writing 0, which still fires when the used index crosses 0.
//! - When more than 65535 buffers are added between two kicks, the added counter saturates
//!   instead of C's forced kick, so [`SplitRing::kick_prepare`] errs toward notifying.
//! - Adding to a full ring does not notify the device (C does when the buffer has out
//!   parts, for historical reasons); the caller may kick on [`RingError::NoSpace`].

#![deny(unsafe_code)]

use core::{
    fmt,
    ops::DerefMut, //
};

// The protocol constants, in a file of their own that the transport includes too.
#[path = "spec.rs"]
mod spec;
pub use spec::*;

/// Size of a `u16` ring field in bytes.
const U16_SIZE: usize = 2;
/// Size in bytes of one used ring element: `{ u32 id, u32 len }`.
const USED_ELEM_SIZE: usize = 8;
/// Size in bytes of the `flags` and `idx` header of the avail and used rings.
const RING_HEADER_SIZE: usize = 4;

/// Errors returned by the ring core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The queue size, alignment, shadow storage or indirect table does not fit.
    InvalidSize,
    /// Not enough free descriptors for the buffer; the ring was not changed.
    NoSpace,
    /// The buffer has no elements.
    EmptyBuffer,
    /// The ring is broken (device misbehaved or is gone); nothing more is accepted.
    Broken,
    /// The buffer has more elements than the queue size (the spec's chain length limit).
    TooManyDescriptors,
}

/// Why a queue was marked broken (what the device did), for logging once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A used element named a descriptor id that is not below the queue size.
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
    },
    /// A used element named a descriptor that is not the head of a buffer in flight
    /// (a chain member, a free descriptor, or a buffer already completed).
    UsedIdNotInFlight {
        /// The id the device wrote.
        id: u32,
    },
    /// The used index moved by more than the number of buffers the device owns.
    UsedIdxJump {
        /// The driver's last consumed used index.
        last: u16,
        /// The used index the device wrote.
        new: u16,
    },
    /// The ring memory handed to the core is smaller than the layout (a driver bug: the core
    /// refuses to touch memory it cannot prove in bounds).
    RingTooSmall {
        /// Length of the memory passed.
        len: usize,
        /// Length the layout needs.
        need: usize,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UsedIdOutOfRange { id } => write!(f, "used id {id} out of range"),
            Self::UsedIdNotInFlight { id } => write!(f, "used id {id} is not a head in flight"),
            Self::UsedIdxJump { last, new } => {
                write!(f, "used idx jumped from {last} to {new}")
            }
            Self::RingTooSmall { len, need } => {
                write!(f, "ring memory of {len} bytes, layout needs {need}")
            }
        }
    }
}

/// A used length the device reported beyond the writable part of its buffer, which the ring
/// clamped (not a violation, see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenClamp {
    /// The head id of the buffer.
    pub id: u32,
    /// The length the device wrote.
    pub len: u32,
    /// The writable length of the chain, which the driver got instead.
    pub max: u32,
}

impl fmt::Display for LenClamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "used id {} len {} exceeds writable length {}",
            self.id, self.len, self.max
        )
    }
}

/// Legacy split-ring layout (offsets in bytes from the ring base) for `num` entries and align.
///
/// The legacy layout is one contiguous block: the descriptor table, the avail ring
/// (`flags`, `idx`, `ring[num]`, `used_event`), padding to `align`, then the used ring
/// (`flags`, `idx`, `{id, len}[num]`, `avail_event`).
///
/// # Invariants
///
/// `num` is a power of two in `1..=MAX_QUEUE_SIZE`; `avail` is `16 * num`; `used` is a
/// multiple of an alignment of at least 4; `size` is the end of the used ring and equals
/// [`vring_size`]`(num, align)`.  So every field, for an index below `num`, lies below
/// `size` at an offset aligned to its size (see `View`).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Number of entries.
    num: u16,
    /// Offset of the avail ring.
    avail: usize,
    /// Offset of the used ring.
    used: usize,
    /// Total size in bytes.
    size: usize,
}

impl Layout {
    /// Computes the layout for `num` entries with the used ring aligned to `align` bytes.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidSize`] if `num` is not a power of two in `1..=32768`, or `align` is
    /// not a power of two of at least 4 (the used ring holds 32-bit fields), or the size
    /// overflows `usize`.
    pub const fn new(num: u32, align: usize) -> Result<Layout, RingError> {
        // CAST: lossless, u16 to u32.
        if num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two() {
            return Err(RingError::InvalidSize);
        }
        if align < 4 || !align.is_power_of_two() {
            return Err(RingError::InvalidSize);
        }
        // CAST: lossless, `num` <= 32768 was checked above.
        let n = num as usize;
        // No overflow: `n` <= 32768, so these are below 2^20.
        let avail = n * DESC_SIZE;
        let avail_end = avail + RING_HEADER_SIZE + n * U16_SIZE + U16_SIZE;
        let used = match avail_end.checked_add(align - 1) {
            Some(v) => v & !(align - 1),
            None => return Err(RingError::InvalidSize),
        };
        let size = match used.checked_add(RING_HEADER_SIZE + n * USED_ELEM_SIZE + U16_SIZE) {
            Some(v) => v,
            None => return Err(RingError::InvalidSize),
        };
        // INVARIANT: `num` and `align` were checked above, `size` is `vring_size()`.
        Ok(Layout {
            // CAST: lossless, `num` <= 32768 was checked above.
            num: num as u16,
            avail,
            used,
            size,
        })
    }

    /// Number of ring entries (the queue size).
    pub const fn num(&self) -> u16 {
        self.num
    }

    /// Total size in bytes of the ring memory (equals [`vring_size`]).
    pub const fn size(&self) -> usize {
        self.size
    }

    /// Offset of the descriptor table (always 0 in the legacy layout).
    pub const fn desc_offset(&self) -> usize {
        0
    }

    /// Offset of the avail ring.
    pub const fn avail_offset(&self) -> usize {
        self.avail
    }

    /// Offset of the used ring.
    pub const fn used_offset(&self) -> usize {
        self.used
    }

    /// Mask that turns a free-running index into a ring slot.
    pub const fn mask(&self) -> u16 {
        self.num - 1
    }

    /// Offset of descriptor `i`; `i < num`.
    pub const fn desc(&self, i: u16) -> usize {
        // CAST: lossless, u16 to usize.
        self.desc_offset() + i as usize * DESC_SIZE
    }

    /// Offset of `avail->flags`.
    pub const fn avail_flags(&self) -> usize {
        self.avail
    }

    /// Offset of `avail->idx`.
    pub const fn avail_idx(&self) -> usize {
        self.avail + U16_SIZE
    }

    /// Offset of `avail->ring[slot]`; `slot < num`.
    pub const fn avail_ring(&self, slot: u16) -> usize {
        // CAST: lossless, u16 to usize.
        self.avail + RING_HEADER_SIZE + slot as usize * U16_SIZE
    }

    /// Offset of `used_event`, the `u16` after the avail ring entries.
    pub const fn used_event(&self) -> usize {
        self.avail_ring(self.num)
    }

    /// Offset of `used->flags`.
    pub const fn used_flags(&self) -> usize {
        self.used
    }

    /// Offset of `used->idx`.
    pub const fn used_idx(&self) -> usize {
        self.used + U16_SIZE
    }

    /// Offset of `used->ring[slot].id`; `slot < num`; `.len` follows at +4.
    pub const fn used_elem(&self, slot: u16) -> usize {
        // CAST: lossless, u16 to usize.
        self.used + RING_HEADER_SIZE + slot as usize * USED_ELEM_SIZE
    }

    /// Offset of `avail_event`, the `u16` after the used ring entries.
    pub const fn avail_event(&self) -> usize {
        self.used_elem(self.num)
    }
}

/// Size in bytes of a legacy split ring of `num` entries with the used ring aligned to
/// `align` (C's `vring_size()`).
///
/// The caller validated `num` (a power of two, at most [`MAX_QUEUE_SIZE`]) and `align` (a
/// power of two); for other inputs the result is meaningless but the function does not
/// panic. [`Layout::new`] validates and gives the same value as [`Layout::size`].
pub const fn vring_size(num: u32, align: usize) -> usize {
    // CAST: lossless, u32 to usize on the 32- and 64-bit targets Linux runs on.
    let n = num as usize;
    let mask = align.wrapping_sub(1);
    let head = n
        .wrapping_mul(DESC_SIZE)
        .wrapping_add(n.wrapping_add(3).wrapping_mul(U16_SIZE));
    (head.wrapping_add(mask) & !mask)
        .wrapping_add(3 * U16_SIZE)
        .wrapping_add(n.wrapping_mul(USED_ELEM_SIZE))
}

/// Should the side that moved its index from `old_idx` to `new_idx` notify the other side,
/// which asked to hear about index `event_idx`? (`vring_need_event()`, wrap-safe.)
///
/// True when `event_idx` lies in the window `[old_idx, new_idx)` of 16-bit free-running
/// indexes, i.e. the entry the other side is waiting for was published by this move.
pub fn vring_need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}

/// One scatter-gather element: DMA address and length.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Device (DMA/physical) address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
}

/// A scatter-gather element as [`SplitRing::add`] takes it: [`Buf`], or a caller's own
/// element type, so that a caller's list needs no conversion on the hot path.
pub trait Element {
    /// Device (DMA/physical) address of the buffer.
    fn dma_addr(&self) -> u64;
    /// Length of the buffer in bytes.
    fn byte_len(&self) -> u32;
}

/// Implements [`Element`] for a scatter-gather type with `addr: u64` and `len: u32` fields,
/// which it hands to the ring as they are.
macro_rules! element_by_fields {
    ($t:ty) => {
        impl $crate::split::Element for $t {
            #[inline(always)]
            fn dma_addr(&self) -> u64 {
                self.addr
            }

            #[inline(always)]
            fn byte_len(&self) -> u32 {
                self.len
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use element_by_fields;

element_by_fields!(Buf);

/// Memory barriers the core asks for (legacy rings use the SMP, "weak", flavour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Barrier {
    /// Orders earlier loads before later loads (`virt_rmb()`).
    Read,
    /// Orders earlier stores before later stores (`virt_wmb()`).
    Write,
    /// Orders earlier loads and stores before later loads and stores (`virt_mb()`).
    Full,
}

/// Access to device-visible memory (the ring, an indirect table).
///
/// Offsets are in bytes and always in bounds of `len()` and naturally aligned relative to the
/// start of the memory (the core guarantees it; the implementation must place the start at an
/// 8-byte aligned address). Values are in the CPU's native endianness (legacy virtio = guest
/// endian). Methods take `&self`: the kernel side does volatile access on DMA memory, host
/// mocks use interior mutability.
pub trait RingMem {
    /// Length of the memory in bytes.
    fn len(&self) -> usize;

    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a `u16` at byte offset `off`.
    fn read_u16(&self, off: usize) -> u16;

    /// Reads a `u32` at byte offset `off`.
    fn read_u32(&self, off: usize) -> u32;

    /// Writes a `u16` at byte offset `off`.
    fn write_u16(&self, off: usize, val: u16);

    /// Writes a `u32` at byte offset `off`.
    fn write_u32(&self, off: usize, val: u32);

    /// Writes a `u64` at byte offset `off`.
    fn write_u64(&self, off: usize, val: u64);

    /// Issues a memory barrier of the given kind.
    fn barrier(&self, kind: Barrier);

    /// Reads a `u16` at byte offset `off`, which the caller proved in bounds and aligned.
    ///
    /// The ring calls these `_unchecked` accessors on its hot paths, for fields of a layout
    /// the memory was checked to cover.  The defaults check anyway (and so do the hostile
    /// views of the fault flavour, which keep them); memory whose checks cost enough to
    /// matter overrides them.
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 2 and `off + 2 <= self.len()`.
    #[allow(unsafe_code)]
    unsafe fn read_u16_unchecked(&self, off: usize) -> u16 {
        self.read_u16(off)
    }

    /// Reads a `u32` at byte offset `off` (see [`RingMem::read_u16_unchecked`]).
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 4 and `off + 4 <= self.len()`.
    #[allow(unsafe_code)]
    unsafe fn read_u32_unchecked(&self, off: usize) -> u32 {
        self.read_u32(off)
    }

    /// Writes a `u16` at byte offset `off` (see [`RingMem::read_u16_unchecked`]).
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 2 and `off + 2 <= self.len()`.
    #[allow(unsafe_code)]
    unsafe fn write_u16_unchecked(&self, off: usize, val: u16) {
        self.write_u16(off, val)
    }

    /// Writes a `u32` at byte offset `off` (see [`RingMem::read_u16_unchecked`]).
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 4 and `off + 4 <= self.len()`.
    #[allow(unsafe_code)]
    unsafe fn write_u32_unchecked(&self, off: usize, val: u32) {
        self.write_u32(off, val)
    }

    /// Writes a `u64` at byte offset `off` (see [`RingMem::read_u16_unchecked`]).
    ///
    /// # Safety
    ///
    /// `off` is a multiple of 8 and `off + 8 <= self.len()`.
    #[allow(unsafe_code)]
    unsafe fn write_u64_unchecked(&self, off: usize, val: u64) {
        self.write_u64(off, val)
    }
}

/// Implements [`RingMem`]'s `len` and checked accessors for a memory type that has a `len`
/// field (its size in bytes) and generic `read::<T>(off) -> T` and `write::<T>(off, val)`
/// methods that check each access; the barrier and any unchecked accessors it writes itself.
/// Expanded inside `impl RingMem for ... { }`.
// Not every crate that includes the core expands it.
#[allow(unused_macros)]
macro_rules! ring_mem_checked_accessors {
    () => {
        fn len(&self) -> usize {
            self.len
        }

        fn read_u16(&self, off: usize) -> u16 {
            self.read(off)
        }

        fn read_u32(&self, off: usize) -> u32 {
            self.read(off)
        }

        fn write_u16(&self, off: usize, val: u16) {
            self.write(off, val)
        }

        fn write_u32(&self, off: usize, val: u32) {
            self.write(off, val)
        }

        fn write_u64(&self, off: usize, val: u64) {
            self.write(off, val)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use ring_mem_checked_accessors;

/// Ring memory that covers a whole [`Layout`], with one accessor per ring field: the bounds
/// were checked once, when the view was made, and each field's offset comes from the layout
/// with its index masked below `num`.
///
/// Every field of a layout lies within [`Layout::size`] at an offset aligned to its size (see
/// the invariants of [`Layout`]): descriptors are 16-byte entries from offset 0 (`u64`
/// address, `u32` length, `u16` flags and next), the avail ring starts at `16 * num` and
/// holds `u16`s, the used ring starts at a multiple of 4 and holds `u16`s then 8-byte
/// `{u32 id, u32 len}` elements.
///
/// # Invariants
///
/// `mem.len() >= layout.size()`.
struct View<'a, M: RingMem> {
    mem: &'a M,
    layout: Layout,
}

// The one place the core uses `unsafe`: see the type's documentation.
#[allow(unsafe_code)]
impl<'a, M: RingMem> View<'a, M> {
    /// A view of `mem` for `layout`; `None` if `mem` is too small for it.
    #[inline(always)]
    fn new(mem: &'a M, layout: Layout) -> Option<Self> {
        // INVARIANT: checked here.
        (mem.len() >= layout.size()).then_some(Self { mem, layout })
    }

    /// Writes descriptor `i & (num - 1)`.
    #[inline(always)]
    fn write_desc<E: Element>(&self, i: u16, buf: &E, flags: u16, next: u16) {
        let off = self.layout.desc(i & self.layout.mask());
        // SAFETY: A descriptor below `num` lies within the layout at a multiple of 16, which
        // `mem` covers (type invariant); its fields are at +0 (8 bytes), +8 (4), +12 and +14
        // (2 each), each aligned to its size.
        unsafe {
            self.mem.write_u64_unchecked(off, buf.dma_addr());
            self.mem.write_u32_unchecked(off + 8, buf.byte_len());
            self.mem.write_u16_unchecked(off + 12, flags);
            self.mem.write_u16_unchecked(off + 14, next);
        }
    }

    /// Writes `avail->ring[idx & (num - 1)]`.
    #[inline(always)]
    fn write_avail_entry(&self, idx: u16, head: u16) {
        let off = self.layout.avail_ring(idx & self.layout.mask());
        // SAFETY: An avail ring entry below `num`: in the layout, 2-aligned (see the type).
        unsafe { self.mem.write_u16_unchecked(off, head) }
    }

    /// Writes `avail->idx`.
    #[inline(always)]
    fn write_avail_idx(&self, idx: u16) {
        // SAFETY: `avail->idx`: in the layout, 2-aligned (see the type).
        unsafe { self.mem.write_u16_unchecked(self.layout.avail_idx(), idx) }
    }

    /// Writes `used_event`.
    #[inline(always)]
    fn write_used_event(&self, event: u16) {
        // SAFETY: `used_event`, the `u16` after the `num` avail entries: in the layout,
        // 2-aligned (see the type).
        unsafe {
            self.mem
                .write_u16_unchecked(self.layout.used_event(), event)
        }
    }

    /// Reads `avail_event`.
    #[inline(always)]
    fn read_avail_event(&self) -> u16 {
        // SAFETY: `avail_event`, the `u16` after the `num` used elements: in the layout,
        // 2-aligned (see the type).
        unsafe { self.mem.read_u16_unchecked(self.layout.avail_event()) }
    }

    /// Reads `used->flags`.
    #[inline(always)]
    fn read_used_flags(&self) -> u16 {
        // SAFETY: `used->flags`: in the layout, 4-aligned (see the type).
        unsafe { self.mem.read_u16_unchecked(self.layout.used_flags()) }
    }

    /// Reads `used->idx`.
    #[inline(always)]
    fn read_used_idx(&self) -> u16 {
        // SAFETY: `used->idx`: in the layout, 2-aligned (see the type).
        unsafe { self.mem.read_u16_unchecked(self.layout.used_idx()) }
    }

    /// Reads `used->ring[idx & (num - 1)]`: `(id, len)`.
    #[inline(always)]
    fn read_used_elem(&self, idx: u16) -> (u32, u32) {
        let off = self.layout.used_elem(idx & self.layout.mask());
        // SAFETY: A used element below `num`: in the layout, its `id` and `len` 4-aligned
        // (see the type).
        unsafe {
            (
                self.mem.read_u32_unchecked(off),
                self.mem.read_u32_unchecked(off + 4),
            )
        }
    }

    /// Issues a memory barrier of the given kind.
    #[inline(always)]
    fn barrier(&self, kind: Barrier) {
        self.mem.barrier(kind)
    }
}

/// An indirect table the caller allocated for one add.
///
/// It is memory with room for the descriptors of the buffer, its DMA address, and an opaque
/// handle the core hands back in [`Completed::indirect`] when the buffer completes or is
/// detached, so that the caller can free it.
pub struct Indirect<'a, M: RingMem> {
    /// The table memory; at least `DESC_SIZE` times the number of elements long.
    pub mem: &'a M,
    /// DMA address of the table, as the device sees it.
    pub addr: u64,
    /// Caller's handle for the table, returned on completion or detach.
    pub handle: usize,
}

/// Per-descriptor driver-side shadow (the trusted copy).
///
/// Device-visible memory is never read back for chain walking. Storage is provided by the
/// caller (kernel: `KVec`, host: `Vec`), one per ring entry; [`SplitRing::new`] initialises it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DescState {
    /// Free list link when free, chain link when in use; always below the queue size.
    next: u16,
    /// Flags last written into this ring descriptor.
    flags: u16,
    /// Whether this descriptor is the head of a buffer the device owns.
    in_flight: bool,
    /// Sum of the device-writable lengths of the chain (heads only), saturated.
    writable: u32,
    /// The caller's token (heads only).
    token: usize,
    /// The caller's indirect table handle (heads only).
    indirect: Option<usize>,
}

/// What [`SplitRing::get_buf`] and [`SplitRing::detach_unused`] return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The token given to [`SplitRing::add`].
    pub token: usize,
    /// Bytes the device wrote, clamped to the writable length; 0 for detached ones.
    pub len: u32,
    /// The [`Indirect::handle`] of the buffer's indirect table, to be freed by the caller.
    pub indirect: Option<usize>,
}

/// Driver side of one split virtqueue.
///
/// Callers serialise all calls (the C API has the same rule); `&mut self` enforces it.
///
/// # Invariants
///
/// - `state.len() == layout.num()`.
/// - `free_head` and every `state[i].next` are below `layout.num()`.
/// - `num_free <= layout.num()`, and the free list starting at `free_head` holds `num_free`
///   distinct descriptors; every other descriptor belongs to exactly one chain in flight.
/// - `avail_idx - last_used` (wrapping) is the number of heads in flight, at most `num`.
/// - While the ring is usable, the driver-owned fields of the ring memory hold what the shadows
///   say: `avail->idx == avail_idx`, and `avail->flags == avail_flags` without `EVENT_IDX`.
///   The driver never reads them back, so a device scribbling on them changes nothing.
/// - Once `broken` is set it stays set; `violation` keeps the first device violation.
pub struct SplitRing<S: DerefMut<Target = [DescState]>> {
    /// Where the rings sit in the ring memory.
    layout: Layout,
    /// Trusted per-descriptor state.
    state: S,
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    indirect: bool,
    /// First descriptor of the free list (meaningless when `num_free == 0`).
    free_head: u16,
    /// Number of free descriptors.
    num_free: u16,
    /// Shadow of `avail->idx`.
    avail_idx: u16,
    /// Shadow of `avail->flags`; `VRING_AVAIL_F_NO_INTERRUPT` means callbacks are disabled.
    avail_flags: u16,
    /// Used index up to which the driver has consumed the used ring.
    last_used: u16,
    /// Buffers added since the last `kick_prepare`, saturating.
    num_added: u16,
    /// The ring is broken.
    broken: bool,
    /// The first violation seen.
    violation: Option<Violation>,
    /// Used lengths clamped to their buffer's writable length, saturating.
    clamped: u32,
    /// The first used length clamped.
    first_clamp: Option<LenClamp>,
}

impl<S: DerefMut<Target = [DescState]>> fmt::Debug for SplitRing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitRing")
            .field("num", &self.layout.num())
            .field("event_idx", &self.event_idx)
            .field("indirect", &self.indirect)
            .field("num_free", &self.num_free)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("avail_flags", &self.avail_flags)
            .field("broken", &self.broken)
            .field("violation", &self.violation)
            .field("clamped", &self.clamped)
            .finish()
    }
}

impl<S: DerefMut<Target = [DescState]>> SplitRing<S> {
    /// Creates the driver state for a ring of `layout`, using `state` as shadow storage.
    ///
    /// `event_idx` and `indirect` say whether `VIRTIO_RING_F_EVENT_IDX` and
    /// `VIRTIO_RING_F_INDIRECT_DESC` were negotiated. The contents of `state` are overwritten.
    /// Callbacks start enabled.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidSize`] if `state.len()` is not `layout.num()`.
    pub fn new(
        layout: Layout,
        mut state: S,
        event_idx: bool,
        indirect: bool,
    ) -> Result<Self, RingError> {
        if state.len() != usize::from(layout.num()) {
            return Err(RingError::InvalidSize);
        }
        let mask = layout.mask();
        let mut next: u16 = 0;
        for st in state.iter_mut() {
            // `next` cannot overflow: at most `num` <= 32768 increments.
            next = next.wrapping_add(1) & mask;
            // INVARIANT: `next < num`: it is masked.
            *st = DescState {
                next,
                ..DescState::default()
            };
        }
        // INVARIANT: descriptor `i` links to `i + 1` (the last one back to 0), the whole table
        // is free, nothing is in flight and no memory has been written yet.
        Ok(Self {
            layout,
            state,
            event_idx,
            indirect,
            free_head: 0,
            num_free: layout.num(),
            avail_idx: 0,
            avail_flags: 0,
            last_used: 0,
            num_added: 0,
            broken: false,
            violation: None,
            clamped: 0,
            first_clamp: None,
        })
    }

    /// Writes the initial ring contents before the ring is given to the device.
    ///
    /// Zeroes the whole ring and publishes the driver's shadows (avail flags and index, and
    /// `used_event`). The free list is driver-side only.
    pub fn init<M: RingMem>(&mut self, mem: &M) {
        if self.check_mem(mem).is_none() {
            return;
        }
        let size = self.layout.size();
        let words = size - size % 8;
        for off in (0..words).step_by(8) {
            mem.write_u64(off, 0);
        }
        for off in (words..size).step_by(U16_SIZE) {
            mem.write_u16(off, 0);
        }
        self.publish_cb_state(mem);
        mem.write_u16(self.layout.avail_idx(), self.avail_idx);
        // Orders the initialisation before the transport tells the device where the ring is.
        mem.barrier(Barrier::Write);
    }

    /// The ring layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Number of buffers (heads) the device currently owns.
    pub fn num_in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }

    /// The driver's avail index (what `avail->idx` holds).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index up to which the driver has consumed the used ring.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used
    }

    /// Whether the ring is broken.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The first device violation seen, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// How many used lengths were clamped to their buffer's writable length (saturating).
    pub fn clamped_lens(&self) -> u32 {
        self.clamped
    }

    /// The first used length that was clamped, if any.
    pub fn first_clamp(&self) -> Option<LenClamp> {
        self.first_clamp
    }

    /// Marks the ring broken (the transport says the device is gone).
    ///
    /// Records no violation. Buffers in flight can still be taken back with
    /// [`SplitRing::detach_unused`].
    pub fn mark_broken(&mut self) {
        // INVARIANT: `broken` is only ever set.
        self.broken = true;
    }

    /// Whether `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub fn indirect_enabled(&self) -> bool {
        self.indirect
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn event_idx_enabled(&self) -> bool {
        self.event_idx
    }

    /// Would an add of `total` elements use an indirect table?
    ///
    /// True when indirect descriptors were negotiated, `total > 1`, a descriptor is free (as
    /// C's `virtqueue_use_indirect()`), `total` is within the queue size and the ring is not
    /// broken. The caller then allocates a table with room for `total` descriptors and passes
    /// it to [`SplitRing::add`].
    pub fn wants_indirect(&self, total: usize) -> bool {
        self.indirect
            && !self.broken
            && total > 1
            && total <= usize::from(self.layout.num())
            && self.num_free > 0
    }

    /// Adds a buffer: the `out` (device-readable) elements, then the `inp` (device-writable)
    /// ones.
    ///
    /// `token` is opaque and may be any value (0 included); it comes back in
    /// [`Completed::token`]. With `indirect`, the elements go into the caller's table and one
    /// ring descriptor points at it. Writes the descriptors and the avail ring entry, then a
    /// write barrier, then the avail index (the C order). The device is not notified: call
    /// [`SplitRing::kick_prepare`].
    ///
    /// On error nothing was written and the caller still owns the indirect table.
    ///
    /// # Errors
    ///
    /// - [`RingError::Broken`] if the ring is broken (also if `mem` is smaller than the layout,
    ///   which breaks it).
    /// - [`RingError::EmptyBuffer`] if `out` and `inp` are both empty.
    /// - [`RingError::TooManyDescriptors`] if there are more elements than the queue size.
    /// - [`RingError::InvalidSize`] if `indirect` is given but indirect descriptors were not
    ///   negotiated, or its memory is too small for the elements.
    /// - [`RingError::NoSpace`] if there are not enough free descriptors.
    pub fn add<M: RingMem, I: RingMem, E: Element>(
        &mut self,
        mem: &M,
        out: &[E],
        inp: &[E],
        token: usize,
        indirect: Option<Indirect<'_, I>>,
    ) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let total = out
            .len()
            .checked_add(inp.len())
            .ok_or(RingError::TooManyDescriptors)?;
        if total == 0 {
            return Err(RingError::EmptyBuffer);
        }
        if total > usize::from(self.layout.num()) {
            return Err(RingError::TooManyDescriptors);
        }
        // `total` <= `num` <= 32768.
        let total = u16::try_from(total).map_err(|_| RingError::TooManyDescriptors)?;
        // A table of at most 32768 descriptors of 16 bytes is 512 KiB, which fits in `u32`.
        let table_len = u32::from(total) * 16;
        let Some(view) = self.check_mem(mem) else {
            return Err(RingError::Broken);
        };
        let descs_used = match &indirect {
            Some(table) => {
                if !self.indirect || table.mem.len() < usize::from(total) * DESC_SIZE {
                    return Err(RingError::InvalidSize);
                }
                1
            }
            None => total,
        };
        if self.num_free < descs_used {
            return Err(RingError::NoSpace);
        }

        let writable = inp
            .iter()
            .fold(0u32, |acc, buf| acc.saturating_add(buf.byte_len()));
        let elems = out
            .iter()
            .map(|buf| (buf, 0))
            .chain(inp.iter().map(|buf| (buf, VRING_DESC_F_WRITE)));
        let head = self.free_head;
        let indirect_handle = indirect.as_ref().map(|table| table.handle);

        match indirect {
            Some(table) => {
                let mut k: u16 = 0;
                for (buf, flags) in elems {
                    // No overflow: `k` < `total` <= 32768.
                    let next = k + 1;
                    let (flags, next) = if next < total {
                        (flags | VRING_DESC_F_NEXT, next)
                    } else {
                        (flags, 0)
                    };
                    // In bounds: `k` < `total` and the table length was checked above.
                    write_desc(table.mem, usize::from(k) * DESC_SIZE, buf, flags, next);
                    k = next;
                }
                let desc = Buf {
                    addr: table.addr,
                    len: table_len,
                };
                self.write_ring_desc(&view, head, &desc, VRING_DESC_F_INDIRECT);
                // PANIC: `head` < `num` by the invariant on `free_head`.
                self.free_head = self.state[usize::from(head)].next;
            }
            None => {
                let mut i = head;
                let mut k: u16 = 0;
                for (buf, flags) in elems {
                    k += 1;
                    let flags = if k < total {
                        flags | VRING_DESC_F_NEXT
                    } else {
                        flags
                    };
                    self.write_ring_desc(&view, i, buf, flags);
                    // PANIC: `i` < `num`: it is `free_head` or a `next` link.
                    i = self.state[usize::from(i)].next;
                }
                // `i` is the descriptor after the chain's tail on the free list.
                self.free_head = i;
            }
        }

        // PANIC: `head` < `num` by the invariant on `free_head`.
        let st = &mut self.state[usize::from(head)];
        st.in_flight = true;
        st.writable = writable;
        st.token = token;
        st.indirect = indirect_handle;
        // INVARIANT: `descs_used` descriptors left the free list for the chain at `head`.
        self.num_free -= descs_used;

        view.write_avail_entry(self.avail_idx, head);
        // Orders the descriptors (and the indirect table) and the avail ring entry before the
        // avail index that exposes them to the device.
        view.barrier(Barrier::Write);
        // INVARIANT: one more head in flight; the memory is written right away.
        self.avail_idx = self.avail_idx.wrapping_add(1);
        view.write_avail_idx(self.avail_idx);
        self.num_added = self.num_added.saturating_add(1);
        Ok(())
    }

    /// Decides whether to notify the device of new buffers, and resets the added counter.
    ///
    /// Issues a full barrier first (the avail index store must be visible before the device's
    /// suppression state is read). With `EVENT_IDX`, notifies when `avail_event` lies within
    /// the buffers added since the last call; otherwise unless the device set
    /// `VRING_USED_F_NO_NOTIFY`. A broken ring never wants a notification.
    pub fn kick_prepare<M: RingMem>(&mut self, mem: &M) -> bool {
        let new = self.avail_idx;
        let old = new.wrapping_sub(self.num_added);
        self.num_added = 0;
        if self.broken {
            return false;
        }
        let Some(view) = self.check_mem(mem) else {
            return false;
        };
        // Orders the avail index store before the load of `avail_event` or `used->flags`.
        view.barrier(Barrier::Full);
        if self.event_idx {
            // Any value is acceptable: it only tunes notifications.
            vring_need_event(view.read_avail_event(), new, old)
        } else {
            view.read_used_flags() & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Is there a used entry not yet consumed?
    ///
    /// Reads the used index and validates how far it moved (a runaway index breaks the
    /// ring). A broken ring has nothing to hand out.
    pub fn more_used<M: RingMem>(&mut self, mem: &M) -> bool {
        if self.broken {
            return false;
        }
        let Some(view) = self.check_mem(mem) else {
            return false;
        };
        matches!(self.read_used_idx(&view), Some(idx) if idx != self.last_used)
    }

    /// Takes the next completed buffer from the used ring, validated.
    ///
    /// Returns `Ok(None)` when nothing is pending. Frees the chain to the free list using the
    /// driver's shadow chain, never device-writable memory. When callbacks are enabled, also
    /// publishes `used_event` so that the device interrupts for the next entry.
    ///
    /// # Errors
    ///
    /// [`RingError::Broken`] if the ring is broken, or becomes broken because the device
    /// wrote a bad used index, or an id that is out of range or not a head in flight (a
    /// length beyond the writable part of the chain is clamped and counted, see
    /// [`SplitRing::clamped_lens`]). The violation is recorded (see
    /// [`SplitRing::violation`]) and the buffer, if any, stays in flight for
    /// [`SplitRing::detach_unused`].
    pub fn get_buf<M: RingMem>(&mut self, mem: &M) -> Result<Option<Completed>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let Some(view) = self.check_mem(mem) else {
            return Err(RingError::Broken);
        };
        let used_idx = self.read_used_idx(&view).ok_or(RingError::Broken)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        // Orders the used index load before the loads of the used element it covers.
        view.barrier(Barrier::Read);
        let (id, len) = view.read_used_elem(self.last_used);

        // Validate the device's values against the trusted state before using them.
        let Some(st) = usize::try_from(id)
            .ok()
            .and_then(|i| self.state.get(i).copied())
        else {
            return Err(self.set_broken(Violation::UsedIdOutOfRange { id }));
        };
        if !st.in_flight {
            return Err(self.set_broken(Violation::UsedIdNotInFlight { id }));
        }
        let len = if len > st.writable {
            let max = st.writable;
            self.clamped = self.clamped.saturating_add(1);
            if self.first_clamp.is_none() {
                self.first_clamp = Some(LenClamp { id, len, max });
            }
            max
        } else {
            len
        };
        // `id` indexes `state`, whose length is `num` <= 32768.
        let head =
            u16::try_from(id).map_err(|_| self.set_broken(Violation::UsedIdOutOfRange { id }))?;
        let (token, indirect) = self.detach_chain(head);
        // INVARIANT: the head left flight and the used index moves past it together.
        self.last_used = self.last_used.wrapping_add(1);
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT == 0 {
            view.write_used_event(self.last_used);
            // Orders the `used_event` store before the used index load of the next call.
            view.barrier(Barrier::Full);
        }
        Ok(Some(Completed {
            token,
            len,
            indirect,
        }))
    }

    /// Asks the device not to interrupt for used buffers (advisory).
    ///
    /// Without `EVENT_IDX` this sets `VRING_AVAIL_F_NO_INTERRUPT`; with it, `used_event` is
    /// moved to the entry before `last_used`, which the device cannot reach.
    pub fn disable_cb<M: RingMem>(&mut self, mem: &M) {
        if self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT != 0 {
            return;
        }
        // INVARIANT: the memory is updated below (unless the ring is broken or unusable).
        self.avail_flags |= VRING_AVAIL_F_NO_INTERRUPT;
        if self.broken || self.check_mem(mem).is_none() {
            return;
        }
        self.publish_cb_state(mem);
    }

    /// Re-enables callbacks: the device should interrupt for the next used buffer.
    ///
    /// Returns false if buffers are already pending (the caller should process them, as the
    /// interrupt for them may have been suppressed), true otherwise; a broken ring returns
    /// true (nothing to process).
    pub fn enable_cb<M: RingMem>(&mut self, mem: &M) -> bool {
        let event = self.last_used;
        self.enable_cb_at(mem, event)
    }

    /// Like [`SplitRing::enable_cb`], but with `EVENT_IDX` asks for the interrupt only after
    /// about three quarters of the outstanding buffers are used.
    ///
    /// Returns false if the device is already past that point.
    pub fn enable_cb_delayed<M: RingMem>(&mut self, mem: &M) -> bool {
        // The product fits in `u32`: at most 65535 * 3.
        let bufs = u32::from(self.num_in_flight()) * 3 / 4;
        // `bufs` <= `num_in_flight()`, so it fits in `u16`.
        let bufs = u16::try_from(bufs).unwrap_or(0);
        let event = self.last_used.wrapping_add(bufs);
        self.enable_cb_at(mem, event)
    }

    /// Removes and returns a buffer the device still owns, for teardown after a device reset.
    ///
    /// Returns `None` once every buffer is back, at which point all descriptors are free. Also
    /// moves the avail index back, as C does. Works on a broken ring too.
    pub fn detach_unused<M: RingMem>(&mut self, mem: &M) -> Option<Completed> {
        let pos = self.state.iter().position(|st| st.in_flight)?;
        // `pos` < `num` <= 32768.
        let head = u16::try_from(pos).ok()?;
        let (token, indirect) = self.detach_chain(head);
        // INVARIANT: one head less in flight; the memory is written below if it is usable.
        self.avail_idx = self.avail_idx.wrapping_sub(1);
        if mem.len() >= self.layout.size() {
            mem.write_u16(self.layout.avail_idx(), self.avail_idx);
        }
        Some(Completed {
            token,
            len: 0,
            indirect,
        })
    }

    /// A view of `mem` for the layout; breaks the ring if `mem` does not cover it.
    #[inline(always)]
    fn check_mem<'m, M: RingMem>(&mut self, mem: &'m M) -> Option<View<'m, M>> {
        let view = View::new(mem, self.layout);
        if view.is_none() {
            let (len, need) = (mem.len(), self.layout.size());
            self.set_broken(Violation::RingTooSmall { len, need });
        }
        view
    }

    /// Marks the ring broken, remembering the first violation; returns the error to report.
    #[cold]
    fn set_broken(&mut self, violation: Violation) -> RingError {
        // INVARIANT: `broken` is only ever set; only the first violation is kept.
        self.broken = true;
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
        RingError::Broken
    }

    /// Reads the used index and checks it against the buffers the device owns.
    ///
    /// The device can complete at most the heads in flight, so a used index more than that
    /// ahead of `last_used` (or behind it, which wraps to a large distance) is a lie that
    /// would make the driver read stale used entries. Breaks the ring and returns `None` then.
    #[inline(always)]
    fn read_used_idx<M: RingMem>(&mut self, view: &View<'_, M>) -> Option<u16> {
        let new = view.read_used_idx();
        if new.wrapping_sub(self.last_used) > self.num_in_flight() {
            let last = self.last_used;
            self.set_broken(Violation::UsedIdxJump { last, new });
            return None;
        }
        Some(new)
    }

    /// Writes the interrupt suppression state: `avail->flags` without `EVENT_IDX`, else
    /// `used_event` (next entry when enabled, unreachable when disabled).
    fn publish_cb_state<M: RingMem>(&self, mem: &M) {
        let disabled = self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT != 0;
        if self.event_idx {
            let event = if disabled {
                self.last_used.wrapping_sub(1)
            } else {
                self.last_used
            };
            mem.write_u16(self.layout.used_event(), event);
        } else {
            mem.write_u16(self.layout.avail_flags(), self.avail_flags);
        }
    }

    /// Enables callbacks with `used_event = event`; returns false if the used index is
    /// already past `event` (C's `enable_cb_prepare` + `poll`, and `enable_cb_delayed`).
    fn enable_cb_at<M: RingMem>(&mut self, mem: &M, event: u16) -> bool {
        let was_disabled = self.avail_flags & VRING_AVAIL_F_NO_INTERRUPT != 0;
        // INVARIANT: the memory is updated below (unless the ring is broken or unusable).
        self.avail_flags &= !VRING_AVAIL_F_NO_INTERRUPT;
        if self.broken {
            return true;
        }
        let Some(view) = self.check_mem(mem) else {
            return true;
        };
        if was_disabled && !self.event_idx {
            mem.write_u16(self.layout.avail_flags(), self.avail_flags);
        }
        // Written with and without EVENT_IDX, as C does; a device without it ignores it.
        mem.write_u16(self.layout.used_event(), event);
        // Orders the flags / `used_event` store before the used index load, so that either the
        // device sees callbacks enabled or we see its new used entries.
        mem.barrier(Barrier::Full);
        let pending_ok = event.wrapping_sub(self.last_used);
        match self.read_used_idx(&view) {
            Some(idx) => idx.wrapping_sub(self.last_used) <= pending_ok,
            None => true,
        }
    }

    /// Writes ring descriptor `i` and records its trusted copy; `i < num`.
    ///
    /// Always inlined, as [`write_desc`]: the hot path of every add (`docs/BENCHMARKS.md`).
    #[inline(always)]
    fn write_ring_desc<M: RingMem, E: Element>(
        &mut self,
        view: &View<'_, M>,
        i: u16,
        buf: &E,
        flags: u16,
    ) {
        // PANIC: `i` < `num` is required of callers, which pass free-list entries.
        let st = &mut self.state[usize::from(i)];
        st.flags = flags;
        view.write_desc(i, buf, flags, st.next);
    }

    /// Returns the chain at `head` (a head in flight) to the free list, using the trusted
    /// chain; returns its token and indirect handle.
    #[inline]
    fn detach_chain(&mut self, head: u16) -> (usize, Option<usize>) {
        let num = self.layout.num();
        // PANIC: `head` < `num`: callers pass an index of `state`.
        let st = &mut self.state[usize::from(head)];
        let token = st.token;
        let indirect = st.indirect.take();
        st.in_flight = false;
        st.token = 0;
        st.writable = 0;

        let mut tail = head;
        let mut count: u16 = 1;
        loop {
            // PANIC: `tail` < `num`: `head` or a `next` link.
            let st = &self.state[usize::from(tail)];
            // The bound only guards against a corrupt shadow; a chain is at most `num` long.
            if st.flags & VRING_DESC_F_NEXT == 0 || count >= num {
                break;
            }
            tail = st.next;
            count += 1;
        }
        // INVARIANT: the chain is spliced in front of the free list; `num_free` counts it.
        // PANIC: `tail` < `num`: `head` or a `next` link.
        self.state[usize::from(tail)].next = self.free_head;
        self.free_head = head;
        self.num_free = self.num_free.saturating_add(count).min(num);
        (token, indirect)
    }
}

/// Writes one descriptor at byte offset `off` of `mem`.
#[inline(always)]
fn write_desc<M: RingMem, E: Element>(mem: &M, off: usize, buf: &E, flags: u16, next: u16) {
    mem.write_u64(off, buf.dma_addr());
    mem.write_u32(off + 8, buf.byte_len());
    mem.write_u16(off + 12, flags);
    mem.write_u16(off + 14, next);
}
