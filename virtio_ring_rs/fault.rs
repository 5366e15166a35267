// SPDX-License-Identifier: GPL-2.0

//! Test-only fault injection: makes the driver read a corrupted used ring, once.
//!
//! Compiled only into the fault flavour (`--cfg virtio_rs_fault`, built by `make stress`) and
//! the KUnit flavour (`--cfg virtio_rs_kunit`), never into the production `.ko` files.  It
//! proves with a real device (QEMU's balloon) what the hostile-device KUnit cases prove with
//! a simulated one: a queue whose device breaks the protocol is detected, logged once, never
//! trusted again, and its driver survives.
//!
//! `/sys/kernel/debug/virtio_ring_rs/fault` takes one command:
//!
//! | write | the next completion of queue `Q` (of any queue without `Q`) reads |
//! |---|---|
//! | `id [Q]` | a used element whose id is out of range (`0xdeadbeef`) |
//! | `len [Q]` | a used element whose length is `0xffffffff` (more than any chain's writable bytes) |
//! | `jump [Q]` | a used index `0x8000` past the device's (more than the buffers in flight) |
//! | `off` | nothing: disarms |
//!
//! Reading it shows `armed <kind|off>`, `queue <Q|any>` and `injected <N>` (faults fired
//! since load).  The corruption happens in what the driver *reads* (a view over the ring
//! memory), never in the ring itself, so the device is untouched.  A fault fires exactly once,
//! at the first [`Queue::get_buf`](crate::queue::Queue::get_buf) of a matching queue that has
//! a completion to read, and disarms itself.
//!
//! No `unsafe`.

use crate::{
    queue::DmaMem,
    split::{
        Barrier,
        RingMem, //
    },
};
use kernel::{
    debugfs, fmt,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    uaccess::UserSliceReader,
};

/// What a fault makes the driver read.
// Every fault is in what the device wrote to the used ring; the names say which field.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// The used element's id is out of range.
    UsedId,
    /// The used element's length is absurd.
    UsedLen,
    /// The used index jumped past the buffers in flight.
    UsedIdxJump,
}

/// The id a [`Kind::UsedId`] fault reads: beyond any queue size (at most 32768).
pub(crate) const BAD_ID: u32 = 0xdead_beef;
/// The length a [`Kind::UsedLen`] fault reads.
pub(crate) const BAD_LEN: u32 = u32::MAX;
/// How far a [`Kind::UsedIdxJump`] fault moves the used index: more than any queue holds.
pub(crate) const IDX_JUMP: u16 = 0x8000;

/// Queue number meaning "any queue" in [`ARMED`].
const ANY: u32 = 0xffff;

impl Kind {
    const fn code(self) -> u32 {
        match self {
            Kind::UsedId => 1,
            Kind::UsedLen => 2,
            Kind::UsedIdxJump => 3,
        }
    }

    const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Kind::UsedId),
            2 => Some(Kind::UsedLen),
            3 => Some(Kind::UsedIdxJump),
            _ => None,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Kind::UsedId => "id",
            Kind::UsedLen => "len",
            Kind::UsedIdxJump => "jump",
        }
    }

    fn parse(s: &[u8]) -> Option<Self> {
        match s {
            b"id" => Some(Kind::UsedId),
            b"len" => Some(Kind::UsedLen),
            b"jump" => Some(Kind::UsedIdxJump),
            _ => None,
        }
    }
}

/// The armed fault: `kind code << 16 | queue` (queue [`ANY`] for any), 0 when disarmed.  One
/// word, so that arming and firing are single atomic operations.
static ARMED: Atomic<u32> = Atomic::new(0);
/// Faults fired since the module was loaded.
static INJECTED: Atomic<u64> = Atomic::new(0);

/// Arms a fault for the next completion of queue `queue` (of any queue if `None`).
pub(crate) fn arm(kind: Kind, queue: Option<u16>) {
    let q = queue.map_or(ANY, u32::from);
    ARMED.store((kind.code() << 16) | q, Relaxed);
}

/// Disarms the fault, if any.
pub(crate) fn disarm() {
    ARMED.store(0, Relaxed);
}

/// The armed fault and its queue (`None`: any), if any.
pub(crate) fn armed() -> Option<(Kind, Option<u16>)> {
    let armed = ARMED.load(Relaxed);
    let kind = Kind::from_code(armed >> 16)?;
    let q = armed & 0xffff;
    // CAST: `q` <= 0xffff.
    Some((kind, (q != ANY).then_some(q as u16)))
}

/// Faults fired since load.
pub(crate) fn injected() -> u64 {
    INJECTED.load(Relaxed)
}

/// Fires the armed fault if it targets queue `index` and the queue has a completion to read
/// (`pending`); the fault disarms itself, so it fires once.
pub(crate) fn take(index: u16, pending: bool) -> Option<Kind> {
    let armed = ARMED.load(Relaxed);
    if armed == 0 || !pending {
        return None;
    }
    let q = armed & 0xffff;
    if q != ANY && q != u32::from(index) {
        return None;
    }
    let kind = Kind::from_code(armed >> 16)?;
    // Only one caller fires it (the queues of a device run concurrently).
    ARMED.cmpxchg(armed, 0, Relaxed).ok()?;
    INJECTED.fetch_add(1, Relaxed);
    pr_info!(
        "fault: queue {}: the next completion reads a corrupted used ring ({})\n",
        index,
        kind.name()
    );
    Some(kind)
}

/// A view of a queue's ring memory in which the used ring lies as a fault asks.
///
/// Reads of the targeted field return the corrupted value, every other access goes to the
/// real memory; writes are never changed.
pub(crate) struct FaultyMem<'a> {
    mem: &'a DmaMem,
    kind: Kind,
    /// Offset of `used->idx`.
    used_idx_off: usize,
    /// Offset of the used element the driver reads next.
    elem_off: usize,
}

impl<'a> FaultyMem<'a> {
    /// A view of `mem` for a ring whose used ring starts at `used_off`, with `num` entries,
    /// whose driver reads used entry `last_used` next.
    pub(crate) fn new(
        mem: &'a DmaMem,
        kind: Kind,
        used_off: usize,
        num: u16,
        last_used: u16,
    ) -> Self {
        // The legacy used ring: u16 flags, u16 idx, then 8-byte {u32 id, u32 len} elements.
        let slot = usize::from(last_used & num.wrapping_sub(1));
        Self {
            mem,
            kind,
            used_idx_off: used_off + 2,
            elem_off: used_off + 4 + slot * 8,
        }
    }
}

impl RingMem for FaultyMem<'_> {
    fn len(&self) -> usize {
        self.mem.len()
    }

    fn read_u16(&self, off: usize) -> u16 {
        let v = self.mem.read_u16(off);
        if self.kind == Kind::UsedIdxJump && off == self.used_idx_off {
            v.wrapping_add(IDX_JUMP)
        } else {
            v
        }
    }

    fn read_u32(&self, off: usize) -> u32 {
        match self.kind {
            Kind::UsedId if off == self.elem_off => BAD_ID,
            Kind::UsedLen if off == self.elem_off + 4 => BAD_LEN,
            _ => self.mem.read_u32(off),
        }
    }

    fn write_u16(&self, off: usize, val: u16) {
        self.mem.write_u16(off, val)
    }

    fn write_u32(&self, off: usize, val: u32) {
        self.mem.write_u32(off, val)
    }

    fn write_u64(&self, off: usize, val: u64) {
        self.mem.write_u64(off, val)
    }

    fn barrier(&self, kind: Barrier) {
        self.mem.barrier(kind)
    }
}

/// Parses a command written to the debugfs file (see the module documentation).
///
/// # Errors
///
/// `EINVAL` for anything else.
pub(crate) fn command(text: &[u8]) -> Result {
    let mut words = text
        .split(|c| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let first = words.next().ok_or(EINVAL)?;
    if first == b"off" {
        if words.next().is_some() {
            return Err(EINVAL);
        }
        disarm();
        return Ok(());
    }
    let kind = Kind::parse(first).ok_or(EINVAL)?;
    let queue = match words.next() {
        None => None,
        Some(w) => {
            let s = core::str::from_utf8(w).map_err(|_| EINVAL)?;
            let q: u16 = s.parse().map_err(|_| EINVAL)?;
            if u32::from(q) == ANY {
                return Err(EINVAL);
            }
            Some(q)
        }
    };
    if words.next().is_some() {
        return Err(EINVAL);
    }
    arm(kind, queue);
    Ok(())
}

/// The state, as the debugfs file shows it.
fn show(f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match armed() {
        Some((kind, queue)) => {
            writeln!(f, "armed {}", kind.name())?;
            match queue {
                Some(q) => writeln!(f, "queue {q}")?,
                None => writeln!(f, "queue any")?,
            }
        }
        None => writeln!(f, "armed off")?,
    }
    writeln!(f, "injected {}", injected())
}

/// What the debugfs file holds: nothing (the state is global).
struct Control;

/// The debugfs directory and its `fault` file; dropping it removes them.
pub(crate) struct Debugfs {
    _file: Pin<KBox<debugfs::File<Control>>>,
    _dir: debugfs::Dir,
}

impl Debugfs {
    /// Creates `/sys/kernel/debug/virtio_ring_rs/fault`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<Self> {
        let dir = debugfs::Dir::new(c"virtio_ring_rs");
        let file = KBox::pin_init(
            dir.read_write_callback_file(
                c"fault",
                Ok::<_, Error>(Control),
                &|_: &Control, f: &mut fmt::Formatter<'_>| show(f),
                &|_: &Control, r: &mut UserSliceReader| {
                    let mut buf = [0u8; 32];
                    let n = r.len();
                    let text = buf.get_mut(..n).ok_or(EINVAL)?;
                    r.read_slice(text)?;
                    command(text)
                },
            ),
            GFP_KERNEL,
        )?;
        pr_notice!("fault injection compiled in: a test-only build\n");
        Ok(Self {
            _file: file,
            _dir: dir,
        })
    }
}
