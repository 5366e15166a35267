// SPDX-License-Identifier: GPL-2.0

//! KUnit suite `virtio_balloon_rs_engine`: the balloon's [`Engine`] against a simulated
//! device.
//!
//! The simulated device ([`SimHost`]) keeps every message it is given until the test lets it
//! finish (as a slow device would), remembers which frame numbers it was told about on the
//! deflate queue once it finished the message, and checks every page the engine releases
//! against that record: a page given back to the guest before the device finished the deflate
//! message naming it breaks VIRTIO_BALLOON_F_MUST_TELL_HOST and is counted as a violation.
//! Pages are fake (a frame number each); nothing here touches real memory.  The balloon's
//! list is a vector, from which a test can isolate pages as compaction does.
//!
//! Compiled only into the test flavour of the module (`--cfg virtio_rs_kunit`).
//!
//! No `unsafe` (the `struct page` address of a frame, for scatterlist entries, comes from
//! `mm.rs`).

use crate::engine::{
    Dir,
    Engine,
    Host,
    Progress,
    Sent,
    MSG_PFNS,
    SLOTS, //
};
use kernel::prelude::*;

/// Guest pages per message of the simulated device.
const MSG_PAGES: usize = <SimHost as Host>::MSG_PAGES;

/// A fake guest page: its frame number.
#[derive(Debug, PartialEq, Eq)]
struct SimPage(u64);

/// A message as the simulated device received it.
struct Msg {
    dir: Dir,
    slot: usize,
    pfns: KVec<u32>,
}

/// The simulated device and page allocator.
struct SimHost {
    /// The message buffers, as the driver's DMA memory.
    buf: KVec<u32>,
    /// Messages the device holds.
    pending: KVec<Msg>,
    /// Messages the device finished, not yet reaped: (queue, slot).
    used: KVec<(Dir, usize)>,
    /// Frame numbers the device finished deflating.
    told: KVec<u64>,
    /// Every frame number the device finished, with its queue, in order.
    finished: KVec<(Dir, u64)>,
    /// The balloon's page list.
    list: KVec<SimPage>,
    /// Frame numbers of pages released to the guest.
    freed: KVec<u64>,
    /// Released pages whose deflation the device had not finished.
    violations: u32,
    /// Net change of the managed page count.
    managed: i64,
    /// Refuse the next posts.
    fail_post: bool,
    /// A reset happened: releases without telling are expected.
    reset: bool,
    /// The queues the device broke (inflate, deflate): the ring hands nothing back there.
    broken: [bool; 2],
}

impl SimHost {
    fn new() -> Result<Self> {
        Ok(Self {
            buf: KVec::from_elem(0, SLOTS * MSG_PFNS, GFP_KERNEL)?,
            pending: KVec::new(),
            used: KVec::new(),
            told: KVec::new(),
            finished: KVec::new(),
            list: KVec::new(),
            freed: KVec::new(),
            violations: 0,
            managed: 0,
            fail_post: false,
            reset: false,
            broken: [false; 2],
        })
    }

    /// The device finishes its oldest pending message; false if it holds none.
    fn finish_one(&mut self) -> Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let msg = self.pending.remove(0).map_err(|_| EINVAL)?;
        for &pfn in msg.pfns.iter() {
            if msg.dir == Dir::Deflate {
                self.told.push(u64::from(pfn), GFP_KERNEL)?;
            }
            self.finished.push((msg.dir, u64::from(pfn)), GFP_KERNEL)?;
        }
        self.used.push((msg.dir, msg.slot), GFP_KERNEL)?;
        Ok(true)
    }

    /// The device finishes every message it holds.
    fn finish_all(&mut self) -> Result {
        while self.finish_one()? {}
        Ok(())
    }

    /// Whether no page was released twice.
    fn freed_once(&self) -> Result<bool> {
        let mut freed = KVec::new();
        freed.extend_from_slice(&self.freed, GFP_KERNEL)?;
        freed.sort_unstable();
        Ok(freed.windows(2).all(|w| w[0] != w[1]))
    }

    /// Slots of the messages the device holds, in the order it got them.
    fn pending_slots(&self) -> Result<KVec<usize>> {
        let mut v = KVec::with_capacity(self.pending.len(), GFP_KERNEL)?;
        for m in self.pending.iter() {
            v.push(m.slot, GFP_KERNEL)?;
        }
        Ok(v)
    }

    /// Compaction isolates the page of frame `pfn` from the balloon's list.
    fn isolate(&mut self, pfn: u64) -> Result<SimPage> {
        let i = self.list.iter().position(|p| p.0 == pfn).ok_or(ENOENT)?;
        self.list.remove(i).map_err(|_| EINVAL)
    }

    /// Compaction puts an isolated page (or the new page of a migration) on the list.
    fn putback(&mut self, page: SimPage) -> Result {
        self.list.push(page, GFP_KERNEL)?;
        Ok(())
    }

    /// Whether the device was given frame `pfn` on the inflate queue (finished or not): only
    /// such a page must not go back to the guest untold.
    fn took(&self, pfn: u64) -> bool {
        self.finished
            .iter()
            .any(|&(d, p)| d == Dir::Inflate && p == pfn)
            || self
                .pending
                .iter()
                .filter(|m| m.dir == Dir::Inflate)
                .any(|m| m.pfns.iter().any(|&p| u64::from(p) == pfn))
    }

    /// Frame numbers of the messages the device holds on `dir`'s queue.
    fn pending_pfns(&self, dir: Dir) -> usize {
        self.pending
            .iter()
            .filter(|m| m.dir == dir)
            .map(|m| m.pfns.len())
            .sum()
    }
}

impl Host for SimHost {
    type Page = SimPage;

    const PAGES_PER_PAGE: u32 = crate::mm::PAGES_PER_PAGE;

    fn pfns(page: &SimPage) -> impl Iterator<Item = u64> {
        core::iter::once(page.0)
    }

    fn write_pfn(&mut self, slot: usize, i: usize, pfn: u32) -> Result {
        if i >= MSG_PFNS {
            return Err(EINVAL);
        }
        *self.buf.get_mut(slot * MSG_PFNS + i).ok_or(EINVAL)? = pfn;
        Ok(())
    }

    fn post(&mut self, dir: Dir, slot: usize, n: usize) -> Result {
        if self.fail_post {
            return Err(EIO);
        }
        let start = slot * MSG_PFNS;
        let mut pfns = KVec::with_capacity(n, GFP_KERNEL)?;
        pfns.extend_from_slice(self.buf.get(start..start + n).ok_or(EINVAL)?, GFP_KERNEL)?;
        self.pending.push(Msg { dir, slot, pfns }, GFP_KERNEL)?;
        Ok(())
    }

    fn reap(&mut self, dir: Dir) -> Option<usize> {
        if self.broken[dir as usize] {
            return None;
        }
        let i = self.used.iter().position(|&(d, _)| d == dir)?;
        self.used.remove(i).ok().map(|(_, slot)| slot)
    }

    fn detach(&mut self, dir: Dir) -> Option<usize> {
        let i = self.pending.iter().position(|m| m.dir == dir)?;
        self.pending.remove(i).ok().map(|m| m.slot)
    }

    fn enlist(&mut self, pages: &mut KVec<SimPage>) {
        for p in pages.drain_all() {
            self.enlist_one(p);
        }
    }

    fn enlist_one(&mut self, page: SimPage) {
        self.managed -= 1;
        // Tests never run out of memory; a lost page would show in their counts.
        let _ = self.list.push(page, GFP_KERNEL);
    }

    fn delist(&mut self, out: &mut KVec<SimPage>, n: usize) -> usize {
        let mut got = 0;
        while got < n && out.len() < out.capacity() {
            let Some(p) = self.list.pop() else {
                break;
            };
            self.managed += 1;
            // Cannot fail: checked above.
            let _ = out.push_within_capacity(p);
            got += 1;
        }
        got
    }

    fn release(&mut self, pages: &mut KVec<SimPage>) {
        for p in pages.iter() {
            if !self.reset && self.took(p.0) && !self.told.contains(&p.0) {
                self.violations += 1;
            }
            let _ = self.freed.push(p.0, GFP_KERNEL);
        }
        pages.clear();
    }
}

/// Posts a deflate message of up to `max` pages; returns how many (0 for none).
fn deflate(e: &mut Engine<SimHost>, max: usize) -> Result<usize> {
    Ok(e.post_deflate(max)?.map_or(0, |(n, _)| n))
}

/// An engine over a simulated device.
fn engine() -> Result<Engine<SimHost>> {
    Engine::with_limits(SimHost::new()?, MSG_PAGES, SLOTS)
}

/// `n` fake pages with frame numbers `first..first + n`.
fn pages(first: u64, n: usize) -> Result<KVec<SimPage>> {
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for i in 0..n {
        // CAST: small test counts.
        v.push(SimPage(first + i as u64), GFP_KERNEL)?;
    }
    Ok(v)
}

/// Inflates `n` pages starting at frame `first` and lets the device finish.
fn inflated(first: u64, n: usize) -> Result<Engine<SimHost>> {
    let mut e = engine()?;
    let mut batch = pages(first, n)?;
    while !batch.is_empty() {
        e.post_inflate(&mut batch)?;
        e.host.finish_all()?;
        e.reap()?;
    }
    Ok(e)
}

#[kunit_tests(virtio_balloon_rs_engine)]
mod tests {
    use super::*;

    #[test]
    fn inflate_counts_pages_the_device_took() -> Result {
        let mut e = engine()?;
        let mut batch = pages(100, 10)?;
        assert_eq!(e.post_inflate(&mut batch)?, 10);
        assert!(batch.is_empty());
        // In flight: not in the balloon yet, not accounted.
        assert_eq!(e.num_pages(), 0);
        assert_eq!(e.in_flight(), 1);
        assert_eq!(e.host.managed, 0);
        assert_eq!(e.reap()?, Progress::default());
        // The device read exactly the frame numbers of the batch.
        assert_eq!(e.host.pending_pfns(Dir::Inflate), 10);
        let mut sent = KVec::new();
        sent.extend_from_slice(&e.host.pending[0].pfns, GFP_KERNEL)?;
        sent.sort_unstable();
        for (i, pfn) in sent.iter().enumerate() {
            // CAST: small test counts.
            assert_eq!(*pfn, 100 + i as u32);
        }
        e.host.finish_all()?;
        let p = e.reap()?;
        assert_eq!(p.inflated, 10);
        assert_eq!(p.deflated, 0);
        assert_eq!(e.num_pages(), 10);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.host.managed, -10);
        assert!(e.host.freed.is_empty());
        Ok(())
    }

    #[test]
    fn deflate_releases_only_after_the_device_was_told() -> Result {
        let mut e = inflated(1000, 20)?;
        assert_eq!(deflate(&mut e, 8)?, 8);
        // Out of the balloon, but the device has not finished: nothing is released, however
        // often the driver looks.
        assert_eq!(e.num_pages(), 12);
        for _ in 0..3 {
            assert_eq!(e.reap()?, Progress::default());
        }
        assert!(e.host.freed.is_empty());
        assert_eq!(e.host.pending_pfns(Dir::Deflate), 8);
        // A second message while the first is pending.
        assert_eq!(deflate(&mut e, 5)?, 5);
        assert!(e.host.finish_one()?);
        let p = e.reap()?;
        assert_eq!(p.deflated, 8);
        assert_eq!(e.host.freed.len(), 8);
        assert!(e.host.finish_one()?);
        assert_eq!(e.reap()?.deflated, 5);
        assert_eq!(e.host.freed.len(), 13);
        assert_eq!(e.host.violations, 0);
        assert_eq!(e.num_pages(), 7);
        assert_eq!(e.host.managed, -7);
        Ok(())
    }

    #[test]
    fn messages_are_bounded() -> Result {
        let mut e = engine()?;
        let mut batch = pages(1 << 20, MSG_PAGES + 3)?;
        // One message carries at most `MSG_PAGES` pages; the rest stays with the caller.
        assert_eq!(e.post_inflate(&mut batch)?, MSG_PAGES);
        assert_eq!(batch.len(), 3);
        assert_eq!(e.host.pending_pfns(Dir::Inflate), MSG_PFNS);
        // At most `SLOTS` messages in flight.
        for _ in 1..SLOTS {
            let mut one = pages(7, 1)?;
            assert_eq!(e.post_inflate(&mut one)?, 1);
        }
        assert!(!e.has_free_slot());
        assert_eq!(e.post_inflate(&mut batch), Err(EBUSY));
        assert_eq!(batch.len(), 3);
        e.host.finish_all()?;
        assert_eq!(e.reap()?.inflated as usize, MSG_PAGES + SLOTS - 1);
        assert!(e.has_free_slot());
        Ok(())
    }

    #[test]
    fn a_page_the_device_cannot_name_goes_back() -> Result {
        // Frame numbers beyond 32 bits (memory above 16 TiB), among ordinary ones.
        const HIGH: u64 = 1 << 32;
        let mut e = Engine::with_limits(SimHost::new()?, 4, SLOTS)?;
        let mut batch = KVec::new();
        for pfn in [
            10,
            HIGH,
            11,
            HIGH + 7,
            12,
            HIGH + 1,
            HIGH + 2,
            HIGH + 3,
            HIGH + 4,
        ] {
            batch.push(SimPage(pfn), GFP_KERNEL)?;
        }
        // No error: the unaddressable pages go back to the guest, the others are posted.
        assert_eq!(e.post_inflate(&mut batch)?, 3);
        assert!(batch.is_empty());
        assert_eq!(e.unaddressable(), 6);
        let mut freed = KVec::new();
        freed.extend_from_slice(&e.host.freed, GFP_KERNEL)?;
        freed.sort_unstable();
        assert_eq!(
            &freed[..],
            &[HIGH, HIGH + 1, HIGH + 2, HIGH + 3, HIGH + 4, HIGH + 7]
        );
        assert_eq!(e.host.pending_pfns(Dir::Inflate), 3);
        e.host.finish_all()?;
        assert_eq!(e.reap()?.inflated, 3);
        assert_eq!(e.num_pages(), 3);
        // Only unaddressable pages: nothing posted, nothing lost, and the slot is free.
        let mut batch = KVec::new();
        batch.push(SimPage(HIGH + 9), GFP_KERNEL)?;
        assert_eq!(e.post_inflate(&mut batch)?, 0);
        assert_eq!(e.unaddressable(), 7);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.slots_left(), SLOTS);
        assert!(e.host.freed_once()?);
        assert_eq!(e.host.violations, 0);
        assert_eq!(e.host.managed, -3);
        Ok(())
    }

    #[test]
    fn a_caller_follows_only_its_own_deflate_messages() -> Result {
        let mut e = inflated(700, 12)?;
        // Another deflate message (the worker's), then the caller's (the shrinker's).
        assert_eq!(deflate(&mut e, 3)?, 3);
        let (n, mine) = e.post_deflate(4)?.ok_or(EINVAL)?;
        assert_eq!(n, 4);
        // The other message completes first: the caller's is still in flight.
        assert!(e.host.finish_one()?);
        assert_eq!(e.reap()?.deflated, 3);
        assert_eq!(e.sent(&mine), Sent::InFlight);
        assert!(e.host.finish_one()?);
        assert_eq!(e.reap()?.deflated, 4);
        assert_eq!(e.sent(&mine), Sent::Done);
        // An empty balloon posts nothing.
        let mut empty = engine()?;
        assert_eq!(empty.post_deflate(4)?, None);
        assert_eq!(e.host.violations, 0);
        Ok(())
    }

    #[test]
    fn limits_shape_the_protocol() -> Result {
        // The C driver's protocol: 256 pages per message, one in flight.
        let mut e = Engine::with_limits(SimHost::new()?, 256, 1)?;
        let mut batch = pages(10_000, 300)?;
        assert_eq!(e.post_inflate(&mut batch)?, 256);
        assert_eq!(e.host.pending_pfns(Dir::Inflate), 256);
        assert_eq!(e.post_inflate(&mut batch), Err(EBUSY));
        e.host.finish_all()?;
        assert_eq!(e.reap()?.inflated, 256);
        assert_eq!(e.post_inflate(&mut batch)?, 44);
        for (msg, slots) in [(0, 1), (MSG_PAGES + 1, 1), (256, 0), (256, SLOTS + 1)] {
            assert!(Engine::with_limits(SimHost::new()?, msg, slots).is_err());
        }
        Ok(())
    }

    #[test]
    fn a_refused_message_loses_nothing() -> Result {
        let mut e = inflated(300, 10)?;
        e.host.fail_post = true;
        assert_eq!(deflate(&mut e, 4), Err(EIO));
        assert_eq!(e.num_pages(), 10);
        let mut batch = pages(400, 3)?;
        assert_eq!(e.post_inflate(&mut batch), Err(EIO));
        assert_eq!(batch.len(), 3);
        assert_eq!(e.in_flight(), 0);
        assert!(e.host.freed.is_empty());
        e.host.fail_post = false;
        assert_eq!(deflate(&mut e, 4)?, 4);
        Ok(())
    }

    #[test]
    fn a_message_handed_back_twice_is_refused() -> Result {
        let mut e = inflated(500, 4)?;
        assert_eq!(deflate(&mut e, 2)?, 2);
        e.host.finish_all()?;
        // The device reports the finished message twice.
        let (_, slot) = e.host.used[0];
        e.host.used.push((Dir::Deflate, slot), GFP_KERNEL)?;
        assert_eq!(e.reap(), Err(EIO));
        // The genuine completion went through once; nothing was released twice.
        assert_eq!(e.host.freed.len(), 2);
        assert_eq!(e.num_pages(), 2);
        // A slot out of range, and a slot with nothing in flight.
        e.host.used.push((Dir::Inflate, SLOTS + 5), GFP_KERNEL)?;
        assert_eq!(e.reap(), Err(EIO));
        e.host.used.push((Dir::Inflate, 1), GFP_KERNEL)?;
        assert_eq!(e.reap(), Err(EIO));
        assert_eq!(e.num_pages(), 2);
        assert_eq!(e.host.freed.len(), 2);
        assert_eq!(e.host.violations, 0);
        Ok(())
    }

    #[test]
    fn teardown_releases_everything_once() -> Result {
        let mut e = inflated(2000, 10)?;
        let mut batch = pages(3000, 5)?;
        assert_eq!(e.post_inflate(&mut batch)?, 5);
        assert_eq!(deflate(&mut e, 3)?, 3);
        // The device is reset with both messages pending.
        e.host.reset = true;
        assert_eq!(e.release_all(), 15);
        assert_eq!(e.num_pages(), 0);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.host.freed.len(), 15);
        assert!(e.host.freed_once()?);
        // Every page that left the managed counts came back.
        assert_eq!(e.host.managed, 0);
        Ok(())
    }

    #[test]
    fn a_broken_inflate_queue_sets_its_messages_aside() -> Result {
        let mut e = inflated(100, 10)?;
        let mut batch = pages(200, 5)?;
        assert_eq!(e.post_inflate(&mut batch)?, 5);
        let lost = e.host.pending_slots()?[0];
        // The device broke the inflate queue: the message in flight never comes back.
        e.host.broken[Dir::Inflate as usize] = true;
        assert_eq!(e.lose(Dir::Inflate), 5);
        assert_eq!(e.set_aside(), 5);
        assert_eq!(e.num_pages(), 10);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.slots_left(), SLOTS - 1);
        // Nothing went back to the guest, nothing was accounted.
        assert!(e.host.freed.is_empty());
        assert_eq!(e.host.managed, -10);
        // The device reads the lost message late: it still gives nothing back.
        e.host.finish_all()?;
        assert_eq!(e.reap()?, Progress::default());
        // Deflating still works, through the other slots only: the device may still read
        // the lost one.
        for _ in 1..SLOTS {
            assert_eq!(deflate(&mut e, 1)?, 1);
        }
        assert!(!e.has_free_slot());
        assert_eq!(deflate(&mut e, 1), Err(EBUSY));
        let slots = e.host.pending_slots()?;
        assert_eq!(slots.len(), SLOTS - 1);
        assert!(slots.iter().all(|&s| s != lost));
        e.host.finish_all()?;
        assert_eq!(e.reap()?.deflated as usize, SLOTS - 1);
        assert_eq!(e.host.violations, 0);
        // Teardown, after the reset, releases the pages set aside, once.
        e.host.reset = true;
        assert_eq!(e.release_all() as usize, 10 - (SLOTS - 1) + 5);
        assert_eq!(e.set_aside(), 0);
        assert_eq!(e.slots_left(), SLOTS);
        assert_eq!(e.host.freed.len(), 15);
        assert!(e.host.freed_once()?);
        assert_eq!(e.host.managed, 0);
        Ok(())
    }

    #[test]
    fn a_broken_deflate_queue_gives_pages_back_untold() -> Result {
        let mut e = inflated(300, 12)?;
        assert_eq!(deflate(&mut e, 5)?, 5);
        let lost = e.host.pending_slots()?[0];
        e.host.broken[Dir::Deflate as usize] = true;
        // The message's pages go back to the guest without the device finishing it: the
        // driver does this only when the device need not be told, so the simulated device
        // counts each of them.
        assert_eq!(e.lose(Dir::Deflate), 5);
        assert_eq!(e.host.freed.len(), 5);
        assert_eq!(e.host.violations, 5);
        assert_eq!(e.set_aside(), 0);
        assert_eq!(e.num_pages(), 7);
        assert_eq!(e.host.managed, -7);
        // Further pages leave untold.
        assert_eq!(e.release_untold(4), 4);
        assert_eq!(e.num_pages(), 3);
        assert_eq!(e.host.managed, -3);
        // Inflating still works, never in the lost slot.
        let mut batch = pages(400, 2)?;
        assert_eq!(e.post_inflate(&mut batch)?, 2);
        // The device still holds the lost message; the new one is the last.
        assert_ne!(e.host.pending_slots()?.last(), Some(&lost));
        e.host.finish_all()?;
        assert_eq!(e.reap()?.inflated, 2);
        assert_eq!(e.release_untold(100), 5);
        assert_eq!(e.release_untold(1), 0);
        assert_eq!(e.num_pages(), 0);
        assert_eq!(e.host.managed, 0);
        assert_eq!(e.host.freed.len(), 14);
        e.host.reset = true;
        assert_eq!(e.release_all(), 0);
        assert_eq!(e.host.freed.len(), 14);
        Ok(())
    }

    #[test]
    fn a_balloon_with_every_slot_lost_holds_still() -> Result {
        // The C protocol: one slot.
        let mut e = Engine::with_limits(SimHost::new()?, 256, 1)?;
        let mut batch = pages(500, 8)?;
        assert_eq!(e.post_inflate(&mut batch)?, 8);
        e.host.finish_all()?;
        e.reap()?;
        let mut batch = pages(600, 3)?;
        assert_eq!(e.post_inflate(&mut batch)?, 3);
        e.host.broken[Dir::Inflate as usize] = true;
        assert_eq!(e.lose(Dir::Inflate), 3);
        assert_eq!(e.slots_left(), 0);
        assert!(!e.has_free_slot());
        // No slot, no page vector: nothing moves, nothing is lost.
        assert_eq!(deflate(&mut e, 1), Err(EBUSY));
        assert_eq!(e.release_untold(1), 0);
        assert_eq!(e.num_pages(), 8);
        assert!(e.host.freed.is_empty());
        e.host.reset = true;
        assert_eq!(e.release_all(), 11);
        assert_eq!(e.host.managed, 0);
        Ok(())
    }

    #[test]
    fn delist_skips_isolated_pages() -> Result {
        let mut e = inflated(100, 3)?;
        // Compaction holds every page of the balloon: nothing can leave it now.
        let a = e.host.isolate(100)?;
        let b = e.host.isolate(101)?;
        let c = e.host.isolate(102)?;
        assert_eq!(deflate(&mut e, 3)?, 0);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.pages_held(), 3);
        // Teardown releases what is on the list and leaves the isolated pages counted.
        e.host.reset = true;
        assert_eq!(e.release_all(), 0);
        assert_eq!(e.pages_held(), 3);
        // They come back: now they go.
        e.host.putback(a)?;
        e.host.putback(b)?;
        e.host.putback(c)?;
        assert_eq!(e.release_all(), 3);
        assert_eq!(e.pages_held(), 0);
        assert!(e.host.freed_once()?);
        Ok(())
    }

    #[test]
    fn migration_tells_the_new_page_then_the_old() -> Result {
        let mut e = inflated(100, 10)?;
        let old = e.host.isolate(104)?;
        // Inflate the new page first; the balloon's size does not change.
        let t = e.post_pfns(Dir::Inflate, core::iter::once(900))?;
        assert_eq!(e.sent(&t), Sent::InFlight);
        assert_eq!(e.host.pending_pfns(Dir::Inflate), 1);
        assert_eq!(e.reap()?, Progress::default());
        e.host.finish_all()?;
        assert_eq!(e.reap()?, Progress::default());
        assert_eq!(e.sent(&t), Sent::Done);
        // Then deflate the old one.
        let t = e.post_pfns(Dir::Deflate, core::iter::once(old.0))?;
        assert_eq!(e.sent(&t), Sent::InFlight);
        e.host.finish_all()?;
        assert_eq!(e.reap()?, Progress::default());
        assert_eq!(e.sent(&t), Sent::Done);
        // The device saw the new page before the old one.
        let mut order = e.host.finished.iter().skip(10);
        assert_eq!(order.next(), Some(&(Dir::Inflate, 900)));
        assert_eq!(order.next(), Some(&(Dir::Deflate, 104)));
        // The core puts the new page on the list and frees the old one.
        e.host.putback(SimPage(900))?;
        assert_eq!(e.pages_held(), 10);
        assert_eq!(e.num_pages(), 10);
        assert!(e.host.freed.is_empty());
        // The new page deflates like any other, after the device was told.
        while e.pages_held() != 0 {
            deflate(&mut e, MSG_PAGES)?;
            e.host.finish_all()?;
            e.reap()?;
        }
        assert!(e.host.freed.contains(&900));
        assert!(!e.host.freed.contains(&104));
        assert_eq!(e.host.freed.len(), 10);
        assert_eq!(e.host.violations, 0);
        Ok(())
    }

    #[test]
    fn a_ticket_is_not_fooled_by_its_slot_reused() -> Result {
        let mut e = inflated(100, 4)?;
        let t = e.post_pfns(Dir::Inflate, core::iter::once(900))?;
        e.host.finish_all()?;
        e.reap()?;
        // Every slot carries another message now, the ticket's among them.
        for _ in 0..SLOTS {
            let mut one = pages(2000, 1)?;
            e.post_inflate(&mut one)?;
        }
        assert!(!e.has_free_slot());
        assert_eq!(e.sent(&t), Sent::Done);
        assert!(e.adopt(&t, SimPage(900)).is_err());
        Ok(())
    }

    #[test]
    fn an_abandoned_migration_keeps_the_new_page() -> Result {
        let mut e = inflated(100, 4)?;
        let old = e.host.isolate(101)?;
        let t = e.post_pfns(Dir::Inflate, core::iter::once(900))?;
        // The migration gives up while the device holds the message: the engine keeps a
        // reference to the new page, the core puts the old one back.
        assert!(e.adopt(&t, SimPage(900)).is_ok());
        e.host.putback(old)?;
        assert_eq!(e.pages_held(), 4);
        // The device reads it late: the new page joins the balloon, as any inflated page.
        e.host.finish_all()?;
        assert_eq!(e.reap()?.inflated, 1);
        assert_eq!(e.pages_held(), 5);
        assert_eq!(e.host.managed, -5);
        assert!(e.host.list.contains(&SimPage(900)));
        // Nothing went back to the guest.
        assert!(e.host.freed.is_empty());
        Ok(())
    }

    #[test]
    fn a_migration_lost_on_a_broken_queue_sets_the_new_page_aside() -> Result {
        let mut e = inflated(100, 4)?;
        let t = e.post_pfns(Dir::Inflate, core::iter::once(900))?;
        e.host.broken[Dir::Inflate as usize] = true;
        assert_eq!(e.lose(Dir::Inflate), 0);
        assert_eq!(e.sent(&t), Sent::Lost);
        assert!(e.adopt(&t, SimPage(900)).is_ok());
        assert_eq!(e.set_aside(), 1);
        assert_eq!(e.pages_held(), 4);
        e.host.finish_all()?;
        assert_eq!(e.reap()?, Progress::default());
        assert!(e.host.freed.is_empty());
        // Released once, at teardown.
        e.host.reset = true;
        assert_eq!(e.release_all(), 5);
        assert!(e.host.freed_once()?);
        assert_eq!(e.host.freed.len(), 5);
        assert_eq!(e.host.managed, 0);
        Ok(())
    }

    #[test]
    fn a_migration_that_cannot_deflate_keeps_both_pages() -> Result {
        let mut e = inflated(100, 4)?;
        let old = e.host.isolate(102)?;
        let t = e.post_pfns(Dir::Inflate, core::iter::once(900))?;
        e.host.finish_all()?;
        e.reap()?;
        assert_eq!(e.sent(&t), Sent::Done);
        // The deflate message cannot be sent: the device took the new page, so it joins the
        // balloon, and the core puts the old one back.
        e.host.fail_post = true;
        assert_eq!(
            e.post_pfns(Dir::Deflate, core::iter::once(old.0)).err(),
            Some(EIO)
        );
        e.host.fail_post = false;
        e.enlist_one(SimPage(900));
        e.host.putback(old)?;
        assert_eq!(e.pages_held(), 5);
        assert_eq!(e.num_pages(), 5);
        assert_eq!(e.host.managed, -5);
        assert_eq!(e.in_flight(), 0);
        assert!(e.has_free_slot());
        e.host.reset = true;
        assert_eq!(e.release_all(), 5);
        assert!(e.host.freed_once()?);
        Ok(())
    }
}

/// KUnit suite `virtio_balloon_rs_features`: what the balloon negotiates for free page
/// reporting and page poisoning (`virtballoon_validate()`), where it finds the reporting queue,
/// and how it reads the scatterlists the page reporting core passes.
#[kunit_tests(virtio_balloon_rs_features)]
mod features_tests {
    use crate::config::{
        driver_features,
        reporting_queue_index,
        F_FREE_PAGE_HINT,
        F_PAGE_POISON,
        F_REPORTING,
        F_STATS_VQ, //
    };
    use crate::reporting::sg_range;
    use kernel::bindings;

    const POISON: u64 = 1 << F_PAGE_POISON;
    const REPORTING: u64 = 1 << F_REPORTING;

    #[test]
    fn poison_and_reporting_follow_the_guest_and_the_device() {
        // (device offers PAGE_POISON, guest poison value, asks PAGE_POISON, asks REPORTING)
        let cases: [(bool, Option<u32>, bool, bool); 6] = [
            // Freed pages keep their contents: no poison value to tell, reporting is safe.
            (true, None, false, true),
            (false, None, false, true),
            // init_on_free: zeroed pages; the device must know, or no reporting.
            (true, Some(0), true, true),
            (false, Some(0), true, false),
            // Page poisoning.
            (true, Some(0xaaaa_aaaa), true, true),
            (false, Some(0xaaaa_aaaa), true, false),
        ];
        for (offers, poison, want_poison, want_reporting) in cases {
            let host = (1 << F_STATS_VQ) | REPORTING | if offers { POISON } else { 0 };
            let f = driver_features(host, poison);
            let (poison, reporting) = ((f & POISON) != 0, (f & REPORTING) != 0);
            assert_eq!(poison, want_poison);
            assert_eq!(reporting, want_reporting);
            // Free page hinting whatever the guest does to freed pages (as C).
            assert_ne!(f & (1 << F_FREE_PAGE_HINT), 0);
        }
    }

    #[test]
    fn the_reporting_queue_follows_the_free_page_queue() {
        let base = (1 << F_STATS_VQ) | REPORTING;
        assert_eq!(reporting_queue_index(base), 3);
        assert_eq!(reporting_queue_index(base | (1 << F_FREE_PAGE_HINT)), 4);
        // QEMU creates the stats queue whatever it offers.
        assert_eq!(reporting_queue_index(REPORTING), 3);
    }

    /// A scatterlist entry naming the `struct page` of frame `pfn`.
    fn entry(pfn: usize, offset: u32, length: u32, flags: u32) -> bindings::scatterlist {
        let page = crate::mm::page_addr_of(pfn);
        bindings::scatterlist {
            // CAST: flag bits below the page pointer's alignment.
            page_link: page | flags as kernel::ffi::c_ulong,
            offset,
            length,
            ..Default::default()
        }
    }

    #[test]
    fn scatterlist_entries_become_guest_physical_ranges() {
        let r = sg_range(&entry(0x12345, 0, 2 << 20, 0));
        assert!(r.is_some_and(|r| r.addr == 0x1234_5000 && r.len == 2 << 20));
        // The last entry carries SG_END: still a page.
        let r = sg_range(&entry(0x200, 0x800, 4096, bindings::SG_END));
        assert!(r.is_some_and(|r| r.addr == 0x20_0800 && r.len == 4096));
        // A chain link, an empty entry, no page: refused.
        assert!(sg_range(&entry(0x200, 0, 4096, bindings::SG_CHAIN)).is_none());
        assert!(sg_range(&entry(0x200, 0, 0, 0)).is_none());
        let none = bindings::scatterlist {
            length: 4096,
            ..Default::default()
        };
        assert!(sg_range(&none).is_none());
    }
}

/// KUnit suite `virtio_balloon_rs_hinting`: how free page hinting reads the host's command
/// ids (`report_free_page_func()`, `send_free_pages()` and `virtio_balloon_cmd_id_received()`
/// in C).
#[kunit_tests(virtio_balloon_rs_hinting)]
mod hinting_tests {
    use crate::config::{
        reporting_queue_index,
        F_FREE_PAGE_HINT,
        F_REPORTING,
        F_STATS_VQ, //
    };
    use crate::hinting::{
        command,
        keep_hinting,
        CmdCache,
        Command,
        CMD_ID_DONE,
        CMD_ID_STOP,
        QUEUE_INDEX, //
    };
    use kernel::prelude::*;

    /// QEMU's first command id (`VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN`).
    const FIRST: u32 = 0x8000_0000;

    #[test]
    fn commands_follow_the_host() {
        // (received, last served, step)
        let cases: [(u32, u32, Command); 8] = [
            // Nothing asked yet.
            (CMD_ID_STOP, CMD_ID_STOP, Command::Idle),
            // A first command, then the same id again: served once.
            (FIRST, CMD_ID_STOP, Command::Start(FIRST)),
            (FIRST, FIRST, Command::Idle),
            // The next bitmap sync asks again with a new id.
            (FIRST + 1, FIRST, Command::Start(FIRST + 1)),
            // The id wraps to the first one again: new for the driver.
            (FIRST, u32::MAX, Command::Start(FIRST)),
            // STOP ends a run, and starts nothing.
            (CMD_ID_STOP, FIRST, Command::Idle),
            // DONE gives the blocks back, whatever was served.
            (CMD_ID_DONE, FIRST, Command::ReturnAll),
            (CMD_ID_DONE, CMD_ID_STOP, Command::ReturnAll),
        ];
        for (received, active, want) in cases {
            assert_eq!(command(received, active), want);
        }
    }

    #[test]
    fn a_run_ends_when_the_id_changes() {
        assert!(keep_hinting(FIRST, FIRST));
        assert!(!keep_hinting(CMD_ID_STOP, FIRST));
        assert!(!keep_hinting(CMD_ID_DONE, FIRST));
        assert!(!keep_hinting(FIRST + 1, FIRST));
    }

    #[test]
    fn the_command_id_is_read_only_after_an_interrupt() -> Result {
        let cache = CmdCache::new();
        let mut reads = 0;
        // The first look reads the device (a command may predate the driver).
        let id = cache.get(|| {
            reads += 1;
            Ok(FIRST)
        });
        assert_eq!((id, reads), (FIRST, 1));
        // No interrupt since: the cached id, no device access.
        let id = cache.get(|| {
            reads += 1;
            Ok(CMD_ID_STOP)
        });
        assert_eq!((id, reads), (FIRST, 1));
        // An interrupt asks for the work item once, however many come before the look.
        assert!(cache.note_change());
        assert!(!cache.note_change());
        let id = cache.get(|| {
            reads += 1;
            Ok(CMD_ID_DONE)
        });
        assert_eq!((id, reads), (CMD_ID_DONE, 2));
        // A failed read keeps the last id.
        assert!(cache.note_change());
        let id = cache.get(|| {
            reads += 1;
            Err(EIO)
        });
        assert_eq!((id, reads), (CMD_ID_DONE, 3));
        Ok(())
    }

    #[test]
    fn the_free_page_queue_sits_before_the_reporting_queue() {
        let host = (1 << F_STATS_VQ) | (1 << F_FREE_PAGE_HINT) | (1 << F_REPORTING);
        assert_eq!(QUEUE_INDEX, 3);
        assert_eq!(reporting_queue_index(host), QUEUE_INDEX + 1);
    }
}
