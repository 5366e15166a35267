// SPDX-License-Identifier: GPL-2.0

//! The balloon's bookkeeping, independent of the device and of real pages.
//!
//! An [`Engine`] counts the pages in the balloon and owns a few message slots; the pages
//! themselves sit on the [`Host`]'s balloon list (the balloon core's, where compaction can
//! migrate them).  A message carries
//! the frame numbers of up to [`Host::MSG_PAGES`] guest pages to the device on the inflate or the
//! deflate queue; up to [`SLOTS`] messages are in flight at once.  The engine decides what
//! happens to pages at each step, and the [`Host`] it is given does the device and
//! page-allocator work:
//!
//! - inflate: freshly allocated pages go into a free slot and are posted; when the device
//!   hands the message back they join the balloon's list;
//! - deflate: pages leave the balloon's list into a free slot and are posted; only when the
//!   device hands the message back are they released to the guest.  So a page is never reused
//!   before the host was told (VIRTIO_BALLOON_F_MUST_TELL_HOST), whatever the features.
//!
//! Page migration moves the balloon from one page to another without changing its size: a
//! message naming a page the engine does not hold ([`Engine::post_pfns`], a [`Ticket`]) tells
//! the device about the new page (inflate), then one about the old page (deflate).  Whoever
//! migrates waits for each; if it gives up while the device may still read a message, it
//! hands the engine a reference to the page ([`Engine::adopt`]), which then follows the
//! message like any other: an inflated page joins the balloon, a deflated one is released.
//!
//! When the device breaks a queue (the ring refuses to read it any further), the messages in
//! flight there are lost: the device may still read them, so their slots are never reused
//! until a reset.  A lost inflate message's pages are set aside (the device may hold them):
//! they neither join the balloon nor go back to the guest before teardown.  A lost deflate
//! message's pages go back to the guest, which the driver allows only when the device need
//! not be told ([`Engine::lose`], [`Engine::release_untold`]).
//!
//! The driver runs the engine under its state lock and does the waiting; the KUnit tests run
//! it against a simulated device.  Nothing here allocates: the slots' page vectors are
//! allocated with the engine, and the balloon's list is the host's (an intrusive list in the
//! driver).
//!
//! No `unsafe`.

use kernel::prelude::*;

/// Messages in flight at most, per balloon (inflate and deflate together).
pub(crate) const SLOTS: usize = 4;

/// Frame numbers (4 KiB pages) per message: 16 KiB of frame numbers, 16 MiB of memory.  The
/// legacy device takes messages of any length; the C driver sends 256.
pub(crate) const MSG_PFNS: usize = 4096;

/// Which queue a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// The inflate queue: pages given to the host.
    Inflate,
    /// The deflate queue: pages taken back.
    Deflate,
}

/// What the engine needs from the device and the page allocator.
pub(crate) trait Host {
    /// A guest page the balloon may hold.
    type Page;

    /// Device (4 KiB) pages per guest page: how many frame numbers [`Host::pfns`] yields for
    /// each page.
    const PAGES_PER_PAGE: u32;

    /// Guest pages per message.
    const MSG_PAGES: usize = MSG_PFNS / Self::PAGES_PER_PAGE as usize;

    /// The device (4 KiB) frame numbers of `page`.
    fn pfns(page: &Self::Page) -> impl Iterator<Item = u64>;

    /// Stores frame number `pfn` at position `i` of message slot `slot`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if `slot` or `i` is out of range.
    fn write_pfn(&mut self, slot: usize, i: usize, pfn: u32) -> Result;

    /// Posts message `slot`, holding `n` frame numbers, on the queue of `dir` and notifies the
    /// device.
    ///
    /// # Errors
    ///
    /// Any error: the message is not in flight.
    fn post(&mut self, dir: Dir, slot: usize, n: usize) -> Result;

    /// The next message of `dir`'s queue that the device handed back.
    fn reap(&mut self, dir: Dir) -> Option<usize>;

    /// Takes back a message the device still holds on `dir`'s queue (after a reset).
    fn detach(&mut self, dir: Dir) -> Option<usize>;

    /// Puts every page of `pages` on the balloon's list (the device took them), emptying it;
    /// they leave the managed page counts unless the device deflates on OOM.
    fn enlist(&mut self, pages: &mut KVec<Self::Page>);

    /// Puts `page` on the balloon's list (the device took it).
    fn enlist_one(&mut self, page: Self::Page);

    /// Takes up to `n` pages off the balloon's list into `out`, within its spare capacity;
    /// returns how many.  Fewer than asked while pages are isolated for migration (they come
    /// back to the list, or their migration puts a new page there); they return to the
    /// managed page counts.
    fn delist(&mut self, out: &mut KVec<Self::Page>, n: usize) -> usize;

    /// Gives every page of `pages` back to the guest, emptying it.
    fn release(&mut self, pages: &mut KVec<Self::Page>);
}

/// What one call of [`Engine::reap`] completed, in 4 KiB pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Pages that joined the balloon.
    pub(crate) inflated: u32,
    /// Pages given back to the guest after the device was told.
    pub(crate) deflated: u32,
}

/// One message slot.
///
/// # Invariants
///
/// - A free slot (`busy` is `None`) is not `lost` and holds no pages.
/// - A busy slot that is not `lost` holds the pages of its message in flight (none for a
///   message naming pages the engine does not hold, until one is adopted).
/// - A `lost` slot is busy; it holds pages only if its message was an inflate message (or a
///   page was adopted after the loss).
/// - `pages.capacity()` is at least the engine's `msg_pages`.
struct Slot<P> {
    busy: Option<Dir>,
    /// The message went to a queue the device broke: the slot stays out of use until a reset.
    lost: bool,
    pages: KVec<P>,
    /// Messages posted from this slot (wrapping): tells a [`Ticket`]'s message from later ones.
    seq: u32,
}

/// A message naming pages the engine does not hold (page migration), to follow with
/// [`Engine::sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    slot: usize,
    seq: u32,
}

/// Where the message of a [`Ticket`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The device holds it.
    InFlight,
    /// It went to a queue the device broke: the device may read it any time before a reset.
    Lost,
    /// The device handed it back (or was reset).
    Done,
}

impl<P> Slot<P> {
    /// Whether a message is in flight in this slot on a working queue.
    fn in_flight(&self, dir: Option<Dir>) -> bool {
        self.busy.is_some() && !self.lost && (dir.is_none() || self.busy == dir)
    }
}

/// The balloon's pages and messages.  See the module documentation.
pub(crate) struct Engine<H: Host> {
    /// The device side, with the balloon's page list.
    pub(crate) host: H,
    /// Pages in the balloon (the device was told and took them): on the host's list, or
    /// isolated from it for migration.
    held: usize,
    slots: KVec<Slot<H::Page>>,
    /// Guest pages per message, at most [`Host::MSG_PAGES`].
    msg_pages: usize,
    /// Guest pages given back at once because the device cannot name them.
    unaddressable: usize,
}

/// Balloon (4 KiB) pages of `n` guest pages.
fn balloon_pages<H: Host>(n: usize) -> u32 {
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .saturating_mul(H::PAGES_PER_PAGE)
}

impl<H: Host> Engine<H> {
    /// An empty balloon that sends at most `msg_pages` guest pages per message and
    /// has at most `slots` messages in flight (the C driver's protocol is 256 and 1).
    ///
    /// # Errors
    ///
    /// `EINVAL` if `msg_pages` is not in `1..=MSG_PAGES` or `slots` not in `1..=SLOTS`,
    /// `ENOMEM`.
    pub(crate) fn with_limits(host: H, msg_pages: usize, slots: usize) -> Result<Self> {
        if !(1..=H::MSG_PAGES).contains(&msg_pages) || !(1..=SLOTS).contains(&slots) {
            return Err(EINVAL);
        }
        let mut v = KVec::with_capacity(slots, GFP_KERNEL)?;
        for _ in 0..slots {
            // INVARIANT: free, with room for one message.
            v.push(
                Slot {
                    busy: None,
                    lost: false,
                    pages: KVec::with_capacity(msg_pages, GFP_KERNEL)?,
                    seq: 0,
                },
                GFP_KERNEL,
            )?;
        }
        Ok(Self {
            host,
            held: 0,
            slots: v,
            msg_pages,
            unaddressable: 0,
        })
    }

    /// Guest pages per message.
    pub(crate) fn msg_pages(&self) -> usize {
        self.msg_pages
    }

    /// Balloon size in 4 KiB pages: the pages the device took and did not give back.
    pub(crate) fn num_pages(&self) -> u32 {
        balloon_pages::<H>(self.held)
    }

    /// Guest pages in the balloon.
    pub(crate) fn pages_held(&self) -> usize {
        self.held
    }

    /// Messages in flight (on working queues).
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.in_flight(None)).count()
    }

    /// Slots not lost to a broken queue.
    pub(crate) fn slots_left(&self) -> usize {
        self.slots.iter().filter(|s| !s.lost).count()
    }

    /// Guest pages of lost inflate messages, set aside until teardown.
    pub(crate) fn set_aside(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.lost)
            .map(|s| s.pages.len())
            .sum()
    }

    /// Whether a message can be posted now.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.slots.iter().any(|s| s.busy.is_none())
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.busy.is_none())
    }

    /// Writes the frame numbers of slot `slot`'s pages into its message; returns how many.
    fn describe(&mut self, slot: usize) -> Result<usize> {
        let mut n = 0;
        for page in self.slots[slot].pages.iter() {
            for pfn in H::pfns(page) {
                // Legacy frame numbers are 32 bits: memory beyond 16 TiB cannot be ballooned.
                let pfn = u32::try_from(pfn).map_err(|_| ERANGE)?;
                self.host.write_pfn(slot, n, pfn)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Posts up to `msg_pages` pages taken from the end of `batch` for inflation; returns
    /// how many guest pages it posted (0 if `batch` is empty).
    ///
    /// A page the device cannot name (a frame number beyond 32 bits: memory above the 16 TiB
    /// a legacy device addresses) goes back to the guest at once, counted by
    /// [`Self::unaddressable`]; it is no device error, and the next allocation may do better.
    ///
    /// # Errors
    ///
    /// `EBUSY` if no slot is free, or the error of describing or posting the message.  The
    /// pages stay in `batch` on error (but for those given back as unaddressable).
    pub(crate) fn post_inflate(&mut self, batch: &mut KVec<H::Page>) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let slot = self.free_slot().ok_or(EBUSY)?;
        self.drop_unaddressable(slot, batch);
        let take = batch.len().min(self.msg_pages);
        if take == 0 {
            return Ok(0);
        }
        for _ in 0..take {
            if let Some(p) = batch.pop() {
                // Cannot fail: `take <= msg_pages <= capacity` (type invariant of `Slot`).
                let _ = self.slots[slot].pages.push_within_capacity(p);
            }
        }
        let posted = self
            .describe(slot)
            .and_then(|n| self.host.post(Dir::Inflate, slot, n));
        match posted {
            Ok(()) => {
                // INVARIANT: busy with a non-empty page vector.
                self.slots[slot].busy = Some(Dir::Inflate);
                self.slots[slot].seq = self.slots[slot].seq.wrapping_add(1);
                Ok(take)
            }
            Err(e) => {
                for p in self.slots[slot].pages.drain_all() {
                    // Cannot fail: the pages came from `batch`, whose capacity is unchanged.
                    let _ = batch.push_within_capacity(p);
                }
                Err(e)
            }
        }
    }

    /// Gives the pages of `batch` that the device cannot name back to the guest, through the
    /// page vector of free slot `slot` (which is empty, and stays so).
    fn drop_unaddressable(&mut self, slot: usize, batch: &mut KVec<H::Page>) {
        let fits = |p: &H::Page| H::pfns(p).all(|pfn| u32::try_from(pfn).is_ok());
        let mut i = batch.len();
        while i != 0 {
            i -= 1;
            // PANIC: `i < batch.len()`, which only shrinks at or after `i`.
            if fits(&batch[i]) {
                continue;
            }
            let last = batch.len() - 1;
            batch.swap(i, last);
            let Some(page) = batch.pop() else {
                break;
            };
            self.unaddressable += 1;
            let pages = &mut self.slots[slot].pages;
            // Cannot fail: emptied whenever it is full below, capacity `msg_pages >= 1`.
            let _ = pages.push_within_capacity(page);
            if pages.len() == pages.capacity() {
                self.host.release(pages);
            }
        }
        // INVARIANT: the slot is free and its vector empty again.
        self.host.release(&mut self.slots[slot].pages);
    }

    /// Guest pages given back so far because the device cannot name them
    /// ([`Self::post_inflate`]).
    pub(crate) fn unaddressable(&self) -> usize {
        self.unaddressable
    }

    /// Takes up to `max` guest pages (at most `msg_pages`) out of the balloon and posts
    /// them for deflation; returns how many, with the message, for a caller that follows its
    /// own messages ([`Self::sent`]); `None` if the balloon is empty, or every page left is
    /// isolated for migration.  They are released when the device hands the message back
    /// ([`Self::reap`]).
    ///
    /// # Errors
    ///
    /// `EBUSY` if no slot is free, or the error of describing or posting the message; the
    /// pages stay in the balloon on error.
    pub(crate) fn post_deflate(&mut self, max: usize) -> Result<Option<(usize, Ticket)>> {
        let take = max.min(self.msg_pages).min(self.held);
        if take == 0 {
            return Ok(None);
        }
        let slot = self.free_slot().ok_or(EBUSY)?;
        // Within the slot vector's capacity, `msg_pages` (type invariant of `Slot`).
        let take = self.host.delist(&mut self.slots[slot].pages, take);
        if take == 0 {
            return Ok(None);
        }
        self.held -= take;
        let posted = self
            .describe(slot)
            .and_then(|n| self.host.post(Dir::Deflate, slot, n));
        match posted {
            Ok(()) => {
                // INVARIANT: busy with a non-empty page vector.
                let s = &mut self.slots[slot];
                s.busy = Some(Dir::Deflate);
                s.seq = s.seq.wrapping_add(1);
                Ok(Some((take, Ticket { slot, seq: s.seq })))
            }
            Err(e) => {
                // Back on the list: the device was not told.
                self.held += take;
                self.host.enlist(&mut self.slots[slot].pages);
                Err(e)
            }
        }
    }

    /// Posts a message naming the pages of `pfns` (4 KiB frame numbers, at most one
    /// message's worth), which the engine does not hold, on `dir`'s queue.  Nothing happens to
    /// any page when the device hands it back, unless one was adopted ([`Self::adopt`]).
    ///
    /// # Errors
    ///
    /// `EBUSY` if no slot is free, `ERANGE` if a frame number does not fit in 32 bits,
    /// `EINVAL` if there are more than a message holds, or the error of posting.
    pub(crate) fn post_pfns(
        &mut self,
        dir: Dir,
        pfns: impl Iterator<Item = u64>,
    ) -> Result<Ticket> {
        let slot = self.free_slot().ok_or(EBUSY)?;
        let mut n = 0;
        for pfn in pfns {
            let pfn = u32::try_from(pfn).map_err(|_| ERANGE)?;
            self.host.write_pfn(slot, n, pfn)?;
            n += 1;
        }
        self.host.post(dir, slot, n)?;
        let s = &mut self.slots[slot];
        // INVARIANT: busy with an empty page vector (the slot was free).
        s.busy = Some(dir);
        s.seq = s.seq.wrapping_add(1);
        Ok(Ticket { slot, seq: s.seq })
    }

    /// Where the message of `ticket` is.
    pub(crate) fn sent(&self, ticket: &Ticket) -> Sent {
        match self.slots.get(ticket.slot) {
            Some(s) if s.seq == ticket.seq && s.busy.is_some() => {
                if s.lost {
                    Sent::Lost
                } else {
                    Sent::InFlight
                }
            }
            _ => Sent::Done,
        }
    }

    /// Gives the engine `page`, named by the message of `ticket`, which the device may still
    /// read: the page follows the message as if the engine had posted it (on an inflate
    /// message it joins the balloon when the device hands it back, or is set aside if the
    /// queue broke; on a deflate message it is released when the device hands it back).  A
    /// reset releases it.
    ///
    /// # Errors
    ///
    /// Gives `page` back if the message is [`Sent::Done`].
    pub(crate) fn adopt(
        &mut self,
        ticket: &Ticket,
        page: H::Page,
    ) -> core::result::Result<(), H::Page> {
        if self.sent(ticket) == Sent::Done {
            return Err(page);
        }
        // PANIC: `sent` found the slot.
        // INVARIANT: a busy slot; its vector is empty (the message was posted without pages)
        // or holds pages adopted before, at most one per frame number, within `msg_pages`.
        self.slots[ticket.slot]
            .pages
            .push_within_capacity(page)
            .map_err(|e| e.0)
    }

    /// Puts `page` in the balloon directly: the device took an inflate message naming it
    /// (a migration that could not finish keeps its new page).
    pub(crate) fn enlist_one(&mut self, page: H::Page) {
        self.held += 1;
        self.host.enlist_one(page);
    }

    /// Completes message `slot` of `dir`; false if the device handed back a message that is
    /// not in flight on that queue (the ring never does: its tokens are checked).
    fn complete(&mut self, dir: Dir, slot: usize, progress: &mut Progress) -> bool {
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        if !s.in_flight(Some(dir)) {
            return false;
        }
        s.busy = None;
        let mut pages = core::mem::take(&mut s.pages);
        let n = balloon_pages::<H>(pages.len());
        match dir {
            Dir::Inflate => {
                self.held += pages.len();
                self.host.enlist(&mut pages);
                progress.inflated += n;
            }
            Dir::Deflate => {
                self.host.release(&mut pages);
                progress.deflated += n;
            }
        }
        // INVARIANT: free again, with its vector (empty, capacity kept) back.
        self.slots[slot].pages = pages;
        true
    }

    /// Completes every message the device handed back.
    ///
    /// # Errors
    ///
    /// `EIO` if the device handed back something that was not in flight (what was completed
    /// before is kept).
    pub(crate) fn reap(&mut self) -> Result<Progress> {
        let mut progress = Progress::default();
        for dir in [Dir::Inflate, Dir::Deflate] {
            while let Some(slot) = self.host.reap(dir) {
                if !self.complete(dir, slot, &mut progress) {
                    return Err(EIO);
                }
            }
        }
        Ok(progress)
    }

    /// The device broke `dir`'s queue: it hands back none of the messages in flight there.
    /// Their slots are lost (the device may still read them).  An inflate message's pages are
    /// set aside until teardown ([`Self::release_all`]); a deflate message's pages go back to
    /// the guest untold, so the caller does this for the deflate queue only when the device
    /// need not be told.  Returns how many 4 KiB pages were set aside or given back.
    pub(crate) fn lose(&mut self, dir: Dir) -> u32 {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if !self.slots[i].in_flight(Some(dir)) {
                continue;
            }
            // INVARIANT: lost while busy; only an inflate message keeps its pages.
            self.slots[i].lost = true;
            n += balloon_pages::<H>(self.slots[i].pages.len());
            if dir == Dir::Deflate {
                let mut pages = core::mem::take(&mut self.slots[i].pages);
                self.host.release(&mut pages);
                self.slots[i].pages = pages;
            }
        }
        n
    }

    /// Gives up to `max` guest pages (at most `msg_pages`) of the balloon back to the guest
    /// without telling the device, whose deflate queue is broken (the caller checked that the
    /// device need not be told); returns how many.  Needs a free slot or a lost deflate slot
    /// for its page vector: returns 0 if none is left, or if the balloon is empty.
    pub(crate) fn release_untold(&mut self, max: usize) -> usize {
        let take = max.min(self.msg_pages).min(self.held);
        let Some(i) = self.slots.iter().position(|s| s.pages.is_empty()) else {
            return 0;
        };
        if take == 0 {
            return 0;
        }
        let mut batch = core::mem::take(&mut self.slots[i].pages);
        // Within the vector's capacity, `msg_pages` (type invariant of `Slot`).
        let take = self.host.delist(&mut batch, take);
        self.held -= take;
        self.host.release(&mut batch);
        // INVARIANT: the slot's state is unchanged and its vector is empty again.
        self.slots[i].pages = batch;
        take
    }

    /// After a device reset: gives back the pages of every message still in flight (an
    /// inflate message's pages never joined the balloon; a deflate message's pages are no
    /// concern of a reset device) and returns how many 4 KiB pages that was.
    pub(crate) fn abandon_in_flight(&mut self) -> u32 {
        let mut progress = Progress::default();
        for dir in [Dir::Inflate, Dir::Deflate] {
            while let Some(slot) = self.host.detach(dir) {
                self.complete(dir, slot, &mut progress);
            }
        }
        // Whatever the queue did not report, and the lost slots (the reset device reads
        // nothing any more).
        let mut n = 0;
        for i in 0..self.slots.len() {
            self.slots[i].lost = false;
            if self.slots[i].busy.take().is_some() {
                // An inflate message's pages never joined the balloon, a deflate message's
                // left it: nobody holds them but the slot.
                let mut pages = core::mem::take(&mut self.slots[i].pages);
                n += balloon_pages::<H>(pages.len());
                self.host.release(&mut pages);
                // INVARIANT: free, not lost, with an empty vector.
                self.slots[i].pages = pages;
            }
        }
        n + progress.deflated
    }

    /// Gives every page still in the balloon or in flight back to the guest without telling
    /// the device (teardown, after a reset); returns how many 4 KiB pages.  Pages isolated for
    /// migration stay in the balloon ([`Self::pages_held`]): call again once they are back.
    pub(crate) fn release_all(&mut self) -> u32 {
        let mut n = self.abandon_in_flight();
        let mut batch = core::mem::take(&mut self.slots[0].pages);
        // Through a slot vector, in bounded steps: no allocation.
        while self.held != 0 {
            let cap = batch.capacity();
            let got = self.host.delist(&mut batch, cap);
            if got == 0 {
                break;
            }
            self.held -= got;
            n += balloon_pages::<H>(got);
            self.host.release(&mut batch);
        }
        self.slots[0].pages = batch;
        n
    }
}
