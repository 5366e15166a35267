// SPDX-License-Identifier: GPL-2.0

//! The balloon's device side, as the engine drives it: the queues, the message buffers in
//! DMA memory and the balloon's page list (through [`ListRef`], in `mm/migrate.rs`).
//!
//! No `unsafe`.

use crate::{
    abi::{
        self,
        virtio::Virtqueues,
        Sg, //
    },
    config::{
        DEFLATE,
        INFLATE, //
    },
    engine::{
        self,
        Dir,
        Host, //
    },
    migrate::ListRef,
    mm::{
        BalloonPage,
        PAGES_PER_PAGE, //
    },
    stats::Counters,
    BalloonDriver,
};
use core::num::NonZeroUsize;
use kernel::{
    prelude::*,
    sync::Arc,
    time::{
        Instant,
        Monotonic, //
    },
};

/// The balloon's device side, as the [`Engine`](crate::engine::Engine) drives it: the
/// queues and the message buffers in DMA memory.
pub(crate) struct DeviceHost {
    /// The queues, until teardown takes them.
    pub(crate) vqs: Option<Virtqueues<BalloonDriver>>,
    /// Frame numbers of [`engine::SLOTS`] messages of [`engine::MSG_PFNS`] each, in memory
    /// the device reads at its guest-physical address.
    pub(crate) pfns: abi::LegacyBuf<u32>,
    /// The balloon's page list, once the shared state is pinned (before any message).
    pub(crate) list: Option<ListRef>,
    /// Where the time spent releasing pages is counted.
    pub(crate) counters: Arc<Counters>,
}

impl DeviceHost {
    fn vq(&mut self, dir: Dir) -> Option<&mut abi::Virtqueue> {
        let slot = match dir {
            Dir::Inflate => INFLATE,
            Dir::Deflate => DEFLATE,
        };
        self.vqs.as_mut().and_then(|v| v.get(slot))
    }

    /// Whether the device broke `dir`'s queue.
    pub(crate) fn broken(&mut self, dir: Dir) -> bool {
        self.vq(dir).is_some_and(|q| q.is_broken())
    }
}

/// The token of message slot `slot`.
fn slot_token(slot: usize) -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(slot)
}

impl Host for DeviceHost {
    type Page = BalloonPage;

    const PAGES_PER_PAGE: u32 = PAGES_PER_PAGE;

    fn pfns(page: &BalloonPage) -> impl Iterator<Item = u64> {
        page.balloon_pfns()
    }

    fn write_pfn(&mut self, slot: usize, i: usize, pfn: u32) -> Result {
        if i >= engine::MSG_PFNS {
            return Err(EINVAL);
        }
        let at = slot.checked_mul(engine::MSG_PFNS).ok_or(EINVAL)? + i;
        kernel::dma_write!(self.pfns, [try: at], pfn);
        Ok(())
    }

    fn post(&mut self, dir: Dir, slot: usize, n: usize) -> Result {
        if slot >= engine::SLOTS || n > engine::MSG_PFNS {
            return Err(EINVAL);
        }
        // CAST: within the buffer, whose size is far below 4 GiB.
        let addr = self.pfns.device_addr() + (slot * engine::MSG_PFNS * 4) as u64;
        // CAST: at most `MSG_PFNS` 4-byte entries.
        let sg = Sg::new(addr, (n * 4) as u32);
        let vq = self.vq(dir).ok_or(EIO)?;
        vq.add_outbuf(sg, slot_token(slot))?;
        // The buffer is the device's now: if the notification fails (device gone), the
        // wait for it fails on a broken queue or times out.
        vq.kick();
        Ok(())
    }

    fn reap(&mut self, dir: Dir) -> Option<usize> {
        let (token, _) = self.vq(dir)?.get_buf()?;
        Some(token.get() - 1)
    }

    fn detach(&mut self, dir: Dir) -> Option<usize> {
        Some(self.vq(dir)?.detach_unused()?.get() - 1)
    }

    fn enlist(&mut self, pages: &mut KVec<BalloonPage>) {
        match &self.list {
            Some(list) => {
                let t = Instant::<Monotonic>::now();
                list.get().enqueue(pages);
                Counters::add_time(&self.counters.list_ns, t);
            }
            // Cannot happen (no message is posted before the list is set); never free a page
            // the device took.
            None => {
                for page in pages.drain_all() {
                    core::mem::forget(page);
                }
            }
        }
    }

    fn enlist_one(&mut self, page: BalloonPage) {
        match &self.list {
            Some(list) => list.get().enqueue_one(page),
            // As in `enlist`.
            None => core::mem::forget(page),
        }
    }

    fn delist(&mut self, out: &mut KVec<BalloonPage>, n: usize) -> usize {
        let t = Instant::<Monotonic>::now();
        let n = self.list.as_ref().map_or(0, |l| l.get().dequeue(out, n));
        Counters::add_time(&self.counters.list_ns, t);
        n
    }

    fn release(&mut self, pages: &mut KVec<BalloonPage>) {
        let t = Instant::<Monotonic>::now();
        BalloonPage::release_all(pages);
        Counters::add_time(&self.counters.release_ns, t);
    }
}
