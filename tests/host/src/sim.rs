// SPDX-License-Identifier: GPL-2.0

//! Simulated device-visible memory, a model of the device side of a split ring, and a test
//! harness that drives [`SplitRing`] while checking its invariants.
//!
//! [`VecMem`] asserts that every access the core makes is in bounds and naturally aligned
//! (the promise [`RingMem`] documents), and can log accesses and barriers so that tests can
//! check their order. [`Device`] reads the avail ring and writes the used ring as QEMU would,
//! and also offers raw writes for hostile behaviour. [`Harness`] keeps the driver-side truth
//! (which tokens are out, how many descriptors each holds, which indirect tables are live) and
//! panics as soon as the ring disagrees with it: that is the test oracle of both the property
//! tests and the fuzz target.

extern crate std;

use core::cell::{
    Cell,
    RefCell, //
};
use std::{
    collections::{
        BTreeMap,
        BTreeSet, //
    },
    vec,
    vec::Vec, //
};

pub use crate::device::ChainError;
use crate::device::{
    walk_chain,
    Chain as ChainKind,
    Desc,
    DeviceRing, //
};
use crate::ring::{
    Barrier,
    Buf,
    Completed,
    DescState,
    Indirect,
    Layout,
    RingError,
    RingMem,
    SplitRing,
    DESC_SIZE,
    VRING_ALIGN, //
};

/// A small deterministic PRNG (xorshift64*), so that property tests need no crates.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Creates a generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// One access made through [`RingMem`], as logged by [`VecMem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A read of `size` bytes at `off`.
    Read {
        /// Byte offset.
        off: usize,
        /// Access size in bytes.
        size: usize,
    },
    /// A write of `val` (`size` bytes) at `off`.
    Write {
        /// Byte offset.
        off: usize,
        /// Access size in bytes.
        size: usize,
        /// The value written.
        val: u64,
    },
    /// A barrier.
    Barrier(Barrier),
}

/// Byte-vector memory implementing [`RingMem`], with optional access log.
#[derive(Debug)]
pub struct VecMem {
    /// The bytes.
    bytes: RefCell<Vec<u8>>,
    /// The access log, when enabled.
    log: RefCell<Option<Vec<Access>>>,
    /// Barriers issued, by kind: read, write, full.
    barriers: Cell<[u64; 3]>,
}

impl VecMem {
    /// Zeroed memory of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: RefCell::new(vec![0; len]),
            log: RefCell::new(None),
            barriers: Cell::new([0; 3]),
        }
    }

    /// Starts (or restarts) logging the core's accesses.
    pub fn start_log(&self) {
        *self.log.borrow_mut() = Some(Vec::new());
    }

    /// Returns the log so far and keeps logging.
    pub fn take_log(&self) -> Vec<Access> {
        self.log
            .borrow_mut()
            .as_mut()
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Number of barriers of `kind` issued so far.
    pub fn barriers(&self, kind: Barrier) -> u64 {
        let counts = self.barriers.get();
        match kind {
            Barrier::Read => counts[0],
            Barrier::Write => counts[1],
            Barrier::Full => counts[2],
        }
    }

    /// Device-side read of `N` bytes at `off` (not logged); `None` when out of bounds.
    fn peek<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let bytes = self.bytes.borrow();
        let src = bytes.get(off..off.checked_add(N)?)?;
        let mut out = [0; N];
        out.copy_from_slice(src);
        Some(out)
    }

    /// Device-side write of `val` at `off` (not logged); ignored when out of bounds.
    fn poke(&self, off: usize, val: &[u8]) {
        let mut bytes = self.bytes.borrow_mut();
        if let Some(dst) = off
            .checked_add(val.len())
            .and_then(|end| bytes.get_mut(off..end))
        {
            dst.copy_from_slice(val);
        }
    }

    /// Device-side read of a `u16`.
    pub fn dev_read_u16(&self, off: usize) -> Option<u16> {
        self.peek(off).map(u16::from_ne_bytes)
    }

    /// Device-side read of a `u32`.
    pub fn dev_read_u32(&self, off: usize) -> Option<u32> {
        self.peek(off).map(u32::from_ne_bytes)
    }

    /// Device-side read of a `u64`.
    pub fn dev_read_u64(&self, off: usize) -> Option<u64> {
        self.peek(off).map(u64::from_ne_bytes)
    }

    /// Device-side write of a `u16`.
    pub fn dev_write_u16(&self, off: usize, val: u16) {
        self.poke(off, &val.to_ne_bytes());
    }

    /// Device-side write of a `u32`.
    pub fn dev_write_u32(&self, off: usize, val: u32) {
        self.poke(off, &val.to_ne_bytes());
    }

    /// Device-side write of a `u64`.
    pub fn dev_write_u64(&self, off: usize, val: u64) {
        self.poke(off, &val.to_ne_bytes());
    }

    /// Checks the [`RingMem`] promise for a core access and logs it.
    fn core_access(&self, off: usize, size: usize, write: Option<u64>) {
        let len = self.bytes.borrow().len();
        assert!(
            off % size == 0,
            "core made a misaligned {size}-byte access at {off:#x}"
        );
        assert!(
            off.checked_add(size).is_some_and(|end| end <= len),
            "core accessed {size} bytes at {off:#x}, beyond the {len:#x}-byte memory"
        );
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(match write {
                Some(val) => Access::Write { off, size, val },
                None => Access::Read { off, size },
            });
        }
    }
}

impl RingMem for VecMem {
    fn len(&self) -> usize {
        self.bytes.borrow().len()
    }

    fn read_u16(&self, off: usize) -> u16 {
        self.core_access(off, 2, None);
        self.dev_read_u16(off).unwrap_or_default()
    }

    fn read_u32(&self, off: usize) -> u32 {
        self.core_access(off, 4, None);
        self.dev_read_u32(off).unwrap_or_default()
    }

    fn write_u16(&self, off: usize, val: u16) {
        self.core_access(off, 2, Some(val.into()));
        self.dev_write_u16(off, val);
    }

    fn write_u32(&self, off: usize, val: u32) {
        self.core_access(off, 4, Some(val.into()));
        self.dev_write_u32(off, val);
    }

    fn write_u64(&self, off: usize, val: u64) {
        self.core_access(off, 8, Some(val));
        self.dev_write_u64(off, val);
    }

    fn barrier(&self, kind: Barrier) {
        let mut counts = self.barriers.get();
        let i = match kind {
            Barrier::Read => 0,
            Barrier::Write => 1,
            Barrier::Full => 2,
        };
        counts[i] += 1;
        self.barriers.set(counts);
        if let Some(log) = self.log.borrow_mut().as_mut() {
            log.push(Access::Barrier(kind));
        }
    }
}

/// Indirect tables the tests allocate, addressable by handle and by simulated DMA address.
#[derive(Debug, Default)]
pub struct TablePool {
    /// Live tables by handle.
    tables: BTreeMap<usize, VecMem>,
    /// Next handle to hand out.
    next: usize,
}

impl TablePool {
    /// Simulated DMA address of the first table; each handle gets a 1 MiB window.
    pub const BASE: u64 = 0x10_0000_0000;

    /// Allocates a table with room for `count` descriptors; returns its handle.
    pub fn alloc(&mut self, count: usize) -> usize {
        let handle = self.next;
        self.next += 1;
        self.tables.insert(handle, VecMem::new(count * DESC_SIZE));
        handle
    }

    /// Simulated DMA address of table `handle`.
    pub fn addr(handle: usize) -> u64 {
        Self::BASE + ((handle as u64) << 20)
    }

    /// The table with `handle`, if live.
    pub fn get(&self, handle: usize) -> Option<&VecMem> {
        self.tables.get(&handle)
    }

    /// The live table at DMA address `addr`, as the device resolves it.
    pub fn by_addr(&self, addr: u64) -> Option<&VecMem> {
        let rel = addr.checked_sub(Self::BASE)?;
        if rel & ((1 << 20) - 1) != 0 {
            return None;
        }
        self.tables.get(&usize::try_from(rel >> 20).ok()?)
    }

    /// The [`Indirect`] argument for table `handle`.
    pub fn indirect(&self, handle: usize) -> Option<Indirect<'_, VecMem>> {
        Some(Indirect {
            mem: self.tables.get(&handle)?,
            addr: Self::addr(handle),
            handle,
        })
    }

    /// Frees table `handle`; false if it was not live.
    pub fn free(&mut self, handle: usize) -> bool {
        self.tables.remove(&handle).is_some()
    }

    /// Number of live tables.
    pub fn live(&self) -> usize {
        self.tables.len()
    }
}

/// A descriptor chain as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor id (what goes into the used ring).
    pub head: u16,
    /// Device-readable elements, in order.
    pub readable: Vec<(u64, u32)>,
    /// Device-writable elements, in order.
    pub writable: Vec<(u64, u32)>,
    /// Whether the chain was an indirect table.
    pub indirect: bool,
}

impl Chain {
    /// Total writable bytes.
    pub fn writable_len(&self) -> u32 {
        self.writable
            .iter()
            .fold(0u32, |acc, (_, len)| acc.saturating_add(*len))
    }
}

/// A view of [`VecMem`] for the device side: the [`RingMem`] accessors go to the unlogged,
/// unchecked `dev_` accessors, and barriers are neither counted nor logged (they are the
/// core's that the tests check).
#[derive(Debug, Clone, Copy)]
pub struct DevView<'a>(pub &'a VecMem);

impl RingMem for DevView<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn read_u16(&self, off: usize) -> u16 {
        self.0.dev_read_u16(off).unwrap_or_default()
    }

    fn read_u32(&self, off: usize) -> u32 {
        self.0.dev_read_u32(off).unwrap_or_default()
    }

    fn write_u16(&self, off: usize, val: u16) {
        self.0.dev_write_u16(off, val)
    }

    fn write_u32(&self, off: usize, val: u32) {
        self.0.dev_write_u32(off, val)
    }

    fn write_u64(&self, off: usize, val: u64) {
        self.0.dev_write_u64(off, val)
    }

    fn barrier(&self, _kind: Barrier) {}
}

/// Model of the device side of a split ring (what QEMU's virtqueue code does): the shared
/// model of `virtio_ring_rs/device.rs` over [`DevView`]s of the ring memory and of the
/// indirect tables of a [`TablePool`].
#[derive(Debug)]
pub struct Device(DeviceRing);

impl Device {
    /// A device for `layout`; `event_idx` as negotiated.
    pub fn new(layout: Layout, event_idx: bool) -> Self {
        Self(DeviceRing::new(layout, event_idx))
    }

    /// Offset of `used_event`.
    pub fn used_event_off(&self) -> usize {
        self.0.layout().used_event()
    }

    /// Offset of `avail_event`.
    pub fn avail_event_off(&self) -> usize {
        self.0.layout().avail_event()
    }

    /// The driver's `avail->idx`.
    pub fn avail_idx(&self, mem: &VecMem) -> u16 {
        self.0.avail_idx(&DevView(mem))
    }

    /// The driver's `avail->flags`.
    pub fn avail_flags(&self, mem: &VecMem) -> u16 {
        self.0.avail_flags(&DevView(mem))
    }

    /// The driver's `used_event`.
    pub fn used_event(&self, mem: &VecMem) -> u16 {
        self.0.used_event(&DevView(mem))
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.0.used_idx()
    }

    /// The device's next avail index.
    pub fn last_avail(&self) -> u16 {
        self.0.last_avail()
    }

    /// Number of avail entries the device has not popped (0 if the driver's index went
    /// backwards, as it does on detach).
    pub fn avail_pending(&self, mem: &VecMem) -> u16 {
        self.0.avail_pending(&DevView(mem))
    }

    /// Pops the next available chain, walking descriptors like QEMU (indirect tables through
    /// `tables`). `None` when nothing is available.
    pub fn pop(&mut self, mem: &VecMem, tables: &TablePool) -> Option<Result<Chain, ChainError>> {
        let head = self.0.pop_head(&DevView(mem))?;
        Some(self.walk(mem, tables, head))
    }

    /// Walks the chain at `head`.
    fn walk(&self, mem: &VecMem, tables: &TablePool, head: u16) -> Result<Chain, ChainError> {
        let mut chain = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
            indirect: false,
        };
        let mut visit = |d: &Desc| {
            if d.writable() {
                chain.writable.push((d.addr, d.len));
            } else {
                chain.readable.push((d.addr, d.len));
            }
            Ok(())
        };
        match self.0.find_chain(&DevView(mem), head)? {
            ChainKind::Direct(head) => self.0.walk_direct(&DevView(mem), head, &mut visit)?,
            ChainKind::Indirect { addr, count } => {
                let table = tables.by_addr(addr).ok_or(ChainError::BadDescriptor)?;
                if table.len() < usize::from(count) * DESC_SIZE {
                    return Err(ChainError::BadIndirect);
                }
                walk_chain(&DevView(table), 0, count, &mut visit)?;
                chain.indirect = true;
            }
        }
        Ok(chain)
    }

    /// Writes used element `{id, len}` at the next used slot and publishes the used index.
    pub fn push(&mut self, mem: &VecMem, id: u32, len: u32) {
        self.0.push(&DevView(mem), id, len)
    }

    /// Writes used element `{id, len}` at the slot of used index `idx` (no publish).
    pub fn write_used_elem(&self, mem: &VecMem, idx: u16, id: u32, len: u32) {
        self.0.write_used_elem(&DevView(mem), idx, id, len)
    }

    /// Sets and publishes the used index (any value: hostile devices too).
    pub fn set_used_idx(&mut self, mem: &VecMem, idx: u16) {
        self.0.set_used_idx(&DevView(mem), idx)
    }

    /// Sets or clears `VRING_USED_F_NO_NOTIFY`.
    pub fn set_no_notify(&self, mem: &VecMem, on: bool) {
        self.0.set_no_notify(&DevView(mem), on)
    }

    /// Writes `used->flags` (any value).
    pub fn set_used_flags(&self, mem: &VecMem, flags: u16) {
        self.0.set_used_flags(&DevView(mem), flags)
    }

    /// Writes `avail_event` (any value).
    pub fn set_avail_event(&self, mem: &VecMem, idx: u16) {
        self.0.set_avail_event(&DevView(mem), idx)
    }

    /// Interrupt decision after pushing, as QEMU's `virtio_split_should_notify()` (minus
    /// NOTIFY_ON_EMPTY): the first decision always interrupts.
    pub fn should_interrupt(&mut self, mem: &VecMem) -> bool {
        self.0.should_interrupt(&DevView(mem))
    }
}

/// What the harness knows about a buffer it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    /// Writable bytes of the buffer.
    pub writable: u32,
    /// Its indirect table, if any.
    pub handle: Option<usize>,
    /// Ring descriptors it holds.
    pub descs: u16,
}

/// Driver ring + memory + device model + bookkeeping, with invariant checks on every step.
///
/// All checks panic: this is test code, and a panic is a finding.
#[derive(Debug)]
pub struct Harness {
    /// The ring under test.
    pub ring: SplitRing<Vec<DescState>>,
    /// The ring memory.
    pub mem: VecMem,
    /// The device model.
    pub dev: Device,
    /// Indirect tables.
    pub tables: TablePool,
    /// Chains the device popped and has not completed yet.
    pub popped: Vec<Chain>,
    /// Buffers added and not yet returned, by token.
    outstanding: BTreeMap<usize, Outstanding>,
    /// Tokens returned so far.
    returned: BTreeSet<usize>,
    /// Next token.
    next_token: usize,
    /// Set when the test did something an honest device or driver would not (raw used ring
    /// writes, detach while the device runs): the ring may then legitimately break.
    pub tainted: bool,
}

impl Harness {
    /// A fresh, initialised ring of `num` entries (legacy alignment) and its device.
    pub fn new(num: u16, event_idx: bool, indirect: bool) -> Self {
        let layout = Layout::new(num.into(), VRING_ALIGN).expect("valid ring size");
        let mem = VecMem::new(layout.size());
        let state = vec![DescState::default(); usize::from(num)];
        let mut ring = SplitRing::new(layout, state, event_idx, indirect).expect("ring");
        ring.init(&mem);
        Self {
            ring,
            mem,
            dev: Device::new(layout, event_idx),
            tables: TablePool::default(),
            popped: Vec::new(),
            outstanding: BTreeMap::new(),
            returned: BTreeSet::new(),
            next_token: 1,
            tainted: false,
        }
    }

    /// Number of ring entries.
    pub fn num(&self) -> u16 {
        self.ring.layout().num()
    }

    /// Buffers out (added, not returned).
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether `token` is out.
    pub fn is_outstanding(&self, token: usize) -> bool {
        self.outstanding.contains_key(&token)
    }

    /// Tokens returned so far.
    pub fn returned(&self) -> usize {
        self.returned.len()
    }

    /// Adds a buffer with `out` readable and `inp` writable elements of the given lengths,
    /// using an indirect table when the ring wants one. Returns the token.
    ///
    /// Checks: errors leave the ring unchanged and match the expected cause; success takes
    /// exactly the expected number of descriptors.
    pub fn add(&mut self, out: &[u32], inp: &[u32]) -> Result<usize, RingError> {
        let token = self.next_token;
        let bufs = |lens: &[u32], base: u64| -> Vec<Buf> {
            lens.iter()
                .enumerate()
                .map(|(k, &len)| Buf {
                    addr: base + ((token as u64) << 16) + k as u64,
                    len,
                })
                .collect()
        };
        let out_bufs = bufs(out, 0x1000_0000_0000);
        let in_bufs = bufs(inp, 0x2000_0000_0000);
        let total = out.len() + inp.len();
        let handle = if self.ring.wants_indirect(total) {
            Some(self.tables.alloc(total))
        } else {
            None
        };
        let before = (self.ring.num_free(), self.ring.avail_idx());
        let was_broken = self.ring.is_broken();
        let table = handle.and_then(|h| self.tables.indirect(h));
        let res = self.ring.add(&self.mem, &out_bufs, &in_bufs, token, table);
        match res {
            Ok(()) => {
                assert!(!was_broken, "add succeeded on a broken ring");
                let descs = if handle.is_some() { 1 } else { total as u16 };
                assert_eq!(self.ring.num_free(), before.0 - descs, "num_free after add");
                assert_eq!(self.ring.avail_idx(), before.1.wrapping_add(1));
                self.next_token += 1;
                let writable = inp.iter().fold(0u32, |a, &l| a.saturating_add(l));
                self.outstanding.insert(
                    token,
                    Outstanding {
                        writable,
                        handle,
                        descs,
                    },
                );
                self.check();
                Ok(token)
            }
            Err(e) => {
                if let Some(h) = handle {
                    assert!(self.tables.free(h));
                }
                assert_eq!(
                    (self.ring.num_free(), self.ring.avail_idx()),
                    before,
                    "failed add {e:?} changed the ring"
                );
                self.check();
                let expected = if was_broken {
                    RingError::Broken
                } else if total == 0 {
                    RingError::EmptyBuffer
                } else if total > usize::from(self.num()) {
                    RingError::TooManyDescriptors
                } else {
                    RingError::NoSpace
                };
                assert_eq!(e, expected, "add error");
                if e == RingError::NoSpace {
                    let need = if handle.is_some() { 1 } else { total };
                    assert!(usize::from(self.ring.num_free()) < need);
                }
                Err(e)
            }
        }
    }

    /// Adds a buffer or panics.
    pub fn add_ok(&mut self, out: &[u32], inp: &[u32]) -> usize {
        self.add(out, inp).expect("add")
    }

    /// Records `c` as returned, checking it was out and its table.
    fn take_back(&mut self, c: &Completed) -> Outstanding {
        assert!(
            !self.returned.contains(&c.token),
            "token {} returned twice",
            c.token
        );
        let o = self
            .outstanding
            .remove(&c.token)
            .unwrap_or_else(|| panic!("token {} returned but never added", c.token));
        self.returned.insert(c.token);
        assert_eq!(c.indirect, o.handle, "indirect handle of token {}", c.token);
        if let Some(h) = c.indirect {
            assert!(self.tables.free(h), "table {h} freed twice");
        }
        o
    }

    /// Calls `get_buf` and checks the result against the bookkeeping.
    pub fn get_buf(&mut self) -> Result<Option<Completed>, RingError> {
        let was_broken = self.ring.is_broken();
        let res = self.ring.get_buf(&self.mem);
        match res {
            Ok(Some(c)) => {
                assert!(!was_broken && !self.ring.is_broken());
                let o = self.take_back(&c);
                assert!(
                    c.len <= o.writable,
                    "len {} > writable {}",
                    c.len,
                    o.writable
                );
            }
            Ok(None) => assert!(!self.ring.is_broken()),
            Err(e) => {
                assert_eq!(e, RingError::Broken);
                assert!(self.ring.is_broken(), "get_buf error but ring not broken");
                assert!(
                    was_broken || self.tainted,
                    "honest run broke the ring: {:?}",
                    self.ring.violation()
                );
            }
        }
        self.check();
        res
    }

    /// Drains the used ring; returns the completions.
    pub fn drain(&mut self) -> Vec<Completed> {
        let mut out = Vec::new();
        while let Ok(Some(c)) = self.get_buf() {
            out.push(c);
        }
        out
    }

    /// Device pops every available chain into [`Harness::popped`]; returns how many.
    pub fn pop_all(&mut self) -> usize {
        let mut n = 0;
        while let Some(chain) = self.dev.pop(&self.mem, &self.tables) {
            let chain = chain.expect("driver wrote a malformed chain");
            self.popped.push(chain);
            n += 1;
        }
        n
    }

    /// Device completes popped chain `k` (index into [`Harness::popped`]) with `len`.
    pub fn complete(&mut self, k: usize, len: u32) {
        let chain = self.popped.remove(k);
        self.dev.push(&self.mem, chain.head.into(), len);
    }

    /// Pops everything and completes it in order with the full writable length.
    pub fn serve_all(&mut self) -> usize {
        self.pop_all();
        let n = self.popped.len();
        while !self.popped.is_empty() {
            let len = self.popped[0].writable_len();
            self.complete(0, len);
        }
        n
    }

    /// Teardown: detaches everything and checks that every outstanding token comes back
    /// exactly once and the whole ring is free.
    pub fn detach_all(&mut self) -> Vec<Completed> {
        let mut out = Vec::new();
        for _ in 0..=self.num() {
            match self.ring.detach_unused(&self.mem) {
                Some(c) => {
                    self.take_back(&c);
                    assert_eq!(c.len, 0);
                    out.push(c);
                    self.check();
                }
                None => break,
            }
        }
        assert_eq!(self.ring.detach_unused(&self.mem), None);
        assert!(
            self.outstanding.is_empty(),
            "tokens lost: {:?}",
            self.outstanding
        );
        assert_eq!(self.ring.num_free(), self.num(), "descriptors lost");
        assert_eq!(self.ring.num_in_flight(), 0);
        assert_eq!(self.tables.live(), 0, "indirect tables leaked");
        out
    }

    /// Checks the accounting invariants.
    pub fn check(&self) {
        let num = self.num();
        let held: u32 = self.outstanding.values().map(|o| u32::from(o.descs)).sum();
        assert!(self.ring.num_free() <= num, "num_free > num");
        assert_eq!(
            u32::from(self.ring.num_free()) + held,
            u32::from(num),
            "num_free does not match the descriptors held"
        );
        assert_eq!(
            usize::from(self.ring.num_in_flight()),
            self.outstanding.len()
        );
        assert_eq!(
            self.tables.live(),
            self.outstanding
                .values()
                .filter(|o| o.handle.is_some())
                .count()
        );
        if !self.tainted {
            assert!(
                !self.ring.is_broken() || self.ring.violation().is_none(),
                "honest run broke the ring: {:?}",
                self.ring.violation()
            );
        }
    }
}

/// Byte source for [`hostile_run`]: reads past the end as zeros.
struct Bytes<'a> {
    /// Remaining input.
    data: &'a [u8],
}

impl Bytes<'_> {
    /// Next byte, 0 once exhausted.
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Next little-endian `u16`.
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Next little-endian `u32`.
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Whether the input is exhausted.
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Interprets `data` as a ring configuration and a sequence of driver operations interleaved
/// with honest and hostile device actions, checking every invariant on the way (it panics on a
/// violation). This is the body of the `hostile_device` fuzz target; the property tests feed
/// it pseudo-random inputs too.
///
/// Invariants checked (through [`Harness`]): the core never panics and never accesses memory
/// out of bounds or misaligned; a token is never returned twice, and never one that is not
/// out; every token added comes back exactly once through `get_buf` or `detach_unused` by the
/// end, broken ring or not; `num_free` never exceeds the queue size and always equals the
/// queue size minus the descriptors of the buffers out; a returned length never exceeds the
/// buffer's writable length; indirect tables come back with their buffer; failed adds leave
/// the ring unchanged; and the ring breaks only if the device (or the test) misbehaved.
pub fn hostile_run(data: &[u8]) {
    let mut inp = Bytes { data };
    let cfg = inp.u8();
    let num = 1u16 << (cfg & 7);
    let mut h = Harness::new(num, cfg & 8 != 0, cfg & 16 != 0);
    let mut ops = 0;
    while !inp.is_empty() && ops < 8192 {
        ops += 1;
        match inp.u8() % 16 {
            0..=2 => {
                let shape = inp.u8();
                let (n_out, n_in) = if shape & 0xf0 == 0xf0 {
                    // Occasionally a buffer around the queue size.
                    let total = usize::from(num) + usize::from(shape & 1);
                    (total / 2, total - total / 2)
                } else {
                    (usize::from(shape & 3), usize::from((shape >> 2) & 3))
                };
                let mut len = || match inp.u8() {
                    0xff => u32::MAX,
                    b => u32::from(b) * 64,
                };
                let out: Vec<u32> = (0..n_out).map(|_| len()).collect();
                let ins: Vec<u32> = (0..n_in).map(|_| len()).collect();
                let _ = h.add(&out, &ins);
            }
            3 => {
                let _ = h.ring.kick_prepare(&h.mem);
            }
            4 | 5 => {
                let _ = h.get_buf();
            }
            6 => {
                let _ = h.ring.enable_cb(&h.mem);
            }
            7 => h.ring.disable_cb(&h.mem),
            8 => {
                let _ = h.ring.enable_cb_delayed(&h.mem);
            }
            9 => {
                let _ = h.ring.more_used(&h.mem);
            }
            10 | 11 => {
                // Honest device: pop what is available, complete one popped chain.
                while let Some(chain) = h.dev.pop(&h.mem, &h.tables) {
                    match chain {
                        Ok(chain) => h.popped.push(chain),
                        // Only possible once the test tampered with the ring.
                        Err(e) => assert!(h.tainted, "driver wrote a malformed chain: {e:?}"),
                    }
                }
                let pick = inp.u8();
                if !h.popped.is_empty() {
                    let k = usize::from(pick) % h.popped.len();
                    let max = h.popped[k].writable_len();
                    let len = match inp.u8() {
                        0 => 0,
                        b => max / u32::from(b),
                    };
                    h.complete(k, len);
                }
            }
            12 => {
                // Hostile: arbitrary used element near the device's used index.
                h.tainted = true;
                let idx = h.dev.used_idx().wrapping_add(u16::from(inp.u8() % 4));
                let sel = inp.u8();
                let id = if sel & 1 == 0 {
                    u32::from(inp.u8()) % (u32::from(num) + 2)
                } else {
                    inp.u32()
                };
                let len = if sel & 2 == 0 {
                    u32::from(inp.u8())
                } else {
                    inp.u32()
                };
                h.dev.write_used_elem(&h.mem, idx, id, len);
                if sel & 4 != 0 {
                    h.dev.set_used_idx(&h.mem, idx.wrapping_add(1));
                }
            }
            13 => {
                // Hostile: the used index moves anywhere.
                h.tainted = true;
                let sel = inp.u8();
                let idx = if sel & 1 == 0 {
                    h.dev.used_idx().wrapping_add(u16::from(sel >> 1))
                } else {
                    inp.u16()
                };
                h.dev.set_used_idx(&h.mem, idx);
            }
            14 => {
                // Legal but arbitrary device hints: they only tune notifications.
                let flags = inp.u16();
                let event = inp.u16();
                h.dev.set_used_flags(&h.mem, flags);
                h.dev.set_avail_event(&h.mem, event);
            }
            _ => {
                // Detach one buffer while the device runs (a driver misuse the core must
                // survive); the bookkeeping still has to balance.
                h.tainted = true;
                if let Some(c) = h.ring.detach_unused(&h.mem) {
                    h.take_back(&c);
                    h.check();
                }
            }
        }
    }
    h.detach_all();
}
