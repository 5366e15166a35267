// SPDX-License-Identifier: GPL-2.0

//! The balloon's worker: its work items, the steps toward the target (inflate, deflate),
//! teardown's deflation and its release of every page.  The waits for the device and
//! freezing are in `wait.rs`, the callbacks in `callbacks.rs`, the statistics in `stats.rs`.
//!
//! No `unsafe`.

use crate::{
    abi::workqueue::flush_work,
    config::{
        F_MUST_TELL_HOST,
        STATS, //
    },
    engine::{
        Progress,
        Sent,
        Ticket, //
    },
    mm::{
        self,
        BalloonPage,
        PAGES_PER_PAGE, //
    },
    shared::{
        BalloonShared,
        StateGuard, //
    },
    stats::Counters,
    wait::Waiter,
};
use kernel::{
    prelude::*,
    sync::{
        atomic::Relaxed,
        Arc, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
    workqueue::{
        self,
        WorkItem, //
    },
};

/// First back-off after a failed page allocation, before the worker retries; it doubles up
/// to [`ALLOC_RETRY_MAX_MS`] while allocations keep failing.
const ALLOC_RETRY_MS: u32 = 200;
/// Longest back-off between inflation attempts.
const ALLOC_RETRY_MAX_MS: u32 = 5000;

/// Messages per run of the update work item; it requeues itself for more, so that teardown
/// and memory pressure get the lock in between.
const MSGS_PER_RUN: usize = 16;

impl WorkItem<0> for BalloonShared {
    type Pointer = Arc<Self>;

    fn run(this: Arc<Self>) {
        if this.stop.load(Relaxed) {
            return;
        }
        let more = this.update_step();
        if more && !this.stop.load(Relaxed) {
            let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 0>(this);
        }
    }
}

impl WorkItem<1> for BalloonShared {
    type Pointer = Arc<Self>;

    fn run(this: Arc<Self>) {
        // Test flavour: a slow delivery path (the device answered; the news comes late).
        #[cfg(virtio_rs_kunit)]
        crate::testing::delay_ack(|| this.stop.load(Relaxed));
        let mut state = this.state.lock();
        state.ack_pending = true;
        // Test flavour: the host preempts the CPU running this, lock held.
        #[cfg(virtio_rs_kunit)]
        crate::testing::hold_ack(|| this.stop.load(Relaxed));
        drop(state);
        this.acked.notify_all();
    }
}

impl WorkItem<2> for BalloonShared {
    type Pointer = Arc<Self>;

    fn run(this: Arc<Self>) {
        if !this.stop.load(Relaxed) {
            this.send_stats(false);
        }
    }
}

impl BalloonShared {
    /// Waits until neither work item is queued or running.  With `stop` set, they do not
    /// requeue themselves, and the callbacks queue nothing new but acks.
    pub(crate) fn flush_work(&self) {
        flush_work(&self.update);
        flush_work(&self.ack);
        flush_work(&self.stats);
        flush_work(&self.hint_work);
    }

    /// Inflates by up to `want` 4 KiB pages, in at most [`MSGS_PER_RUN`] messages; returns
    /// how many joined the balloon, and whether the guest could not spare what was asked
    /// (allocation failed or the reserve was reached).
    fn fill(&self, want: u32) -> (u32, bool) {
        let mut left = (want / PAGES_PER_PAGE) as usize;
        // Allocated outside the lock; pages that could not be posted are freed at the end.
        let msg = self.state.lock().engine.msg_pages();
        let blocks = *crate::module_parameters::block_alloc.value() != 0;
        let Ok(mut batch) = KVec::<BalloonPage>::with_capacity(msg, GFP_KERNEL) else {
            return (0, true);
        };
        let mut done = Progress::default();
        let mut short = false;
        for _ in 0..MSGS_PER_RUN {
            if left == 0 || self.stop.load(Relaxed) {
                break;
            }
            // Never take the guest's last reserve, whatever the target.
            let room = usize::try_from(mm::inflate_headroom()).unwrap_or(usize::MAX);
            let n = left.min(msg).min(room.saturating_add(batch.len()));
            if n < left.min(msg) {
                short = true;
            }
            // Allocate outside the lock: this may reclaim.
            let have = batch.len();
            let t = Instant::<Monotonic>::now();
            BalloonPage::alloc_bulk(&mut batch, n.saturating_sub(have), blocks);
            Counters::add_time(&self.counters.alloc_ns, t);
            if batch.len() < n {
                short = true;
            }
            if batch.is_empty() {
                break;
            }
            let mut state = self.state.lock();
            if self
                .wait_until(&mut state, &mut done, Waiter::Worker, |e| e.has_free_slot())
                .is_err()
                || state.inflate_lost
            {
                break;
            }
            let t = Instant::<Monotonic>::now();
            let posted = state.engine.post_inflate(&mut batch);
            Counters::add_time(&self.counters.post_ns, t);
            self.counters
                .unaddressable
                .store(state.engine.unaddressable() as u64, Relaxed);
            match posted {
                Ok(k) => {
                    Counters::add(&self.counters.messages, 1);
                    left -= k.min(left);
                }
                Err(e) => {
                    dev_err!(self.dev, "cannot post an inflate message: {:?}\n", e);
                    Counters::add(&self.counters.device_errors, 1);
                    break;
                }
            }
            drop(state);
            if short {
                break;
            }
        }
        if short {
            Counters::add(&self.counters.alloc_failures, 1);
        }
        let mut state = self.state.lock();
        let _ = self.wait_until(&mut state, &mut done, Waiter::Worker, |e| {
            e.in_flight() == 0
        });
        drop(state);
        BalloonPage::release_all(&mut batch);
        (done.inflated, short)
    }

    /// Deflates by up to `want` 4 KiB pages; returns how many were given back to the guest.
    fn leak(&self, want: u32, who: Waiter) -> u32 {
        let mut state = self.state.lock();
        self.leak_locked(
            &mut state,
            (want / PAGES_PER_PAGE) as usize,
            MSGS_PER_RUN,
            who,
        )
    }

    /// Deflates by up to `want` guest pages in at most `msgs` messages, telling the device
    /// before each page goes back to the guest, and waits for the device; returns how many
    /// 4 KiB pages the guest got back through this call: of its own messages, not of others
    /// that completed while it waited (the shrinker reports what it freed itself).
    ///
    /// Memory pressure ([`Waiter::Pressure`]) waits for its own messages only, and a timeout
    /// there leaves them with the device: their pages go back to the guest when the device
    /// hands them back, to whoever looks next.
    pub(crate) fn leak_locked(
        &self,
        state: &mut StateGuard<'_>,
        mut want: usize,
        msgs: usize,
        who: Waiter,
    ) -> u32 {
        let mut done = Progress::default();
        // This call's messages not yet handed back: (message, 4 KiB pages).  Each holds a
        // message slot, so there are never more than `SLOTS`.
        let mut mine: [Option<(Ticket, u32)>; crate::engine::SLOTS] = [None; crate::engine::SLOTS];
        let mut freed = 0u32;
        let mut sent = 0;
        if self.dead.load(Relaxed) {
            return 0;
        }
        while want != 0 && sent < msgs {
            if state.deflate_lost {
                // The device need not be told (else the balloon is frozen): give pages
                // back directly, when a page vector is free.
                if state.engine.pages_held() == 0 {
                    break;
                }
                let k = state.engine.release_untold(want);
                // With a page vector free, nothing left because compaction has every page
                // left isolated: not now.
                if k == 0 && state.engine.has_free_slot() {
                    break;
                }
                if k != 0 {
                    let p = Progress {
                        // CAST: at most `MSG_PAGES` guest pages.
                        deflated: k as u32 * PAGES_PER_PAGE,
                        ..Progress::default()
                    };
                    self.count(state, p, &mut done);
                    freed = freed.saturating_add(p.deflated);
                    want -= k.min(want);
                    sent += 1;
                    continue;
                }
            }
            let waited = self.wait_until(state, &mut done, who, |e| e.has_free_slot());
            freed = freed.saturating_add(self.settled(state, &mut mine));
            if waited.is_err() {
                break;
            }
            if state.deflate_lost {
                continue;
            }
            let t = Instant::<Monotonic>::now();
            let posted = state.engine.post_deflate(want);
            Counters::add_time(&self.counters.post_ns, t);
            match posted {
                Ok(None) => break,
                Ok(Some((k, ticket))) => {
                    Counters::add(&self.counters.messages, 1);
                    want -= k.min(want);
                    // CAST: at most `MSG_PAGES` guest pages.
                    let pages = k as u32 * PAGES_PER_PAGE;
                    // Always a free entry: `settled` cleared every message handed back, and
                    // this one took a free slot.
                    if let Some(e) = mine.iter_mut().find(|e| e.is_none()) {
                        *e = Some((ticket, pages));
                    }
                }
                Err(e) => {
                    dev_warn!(self.dev, "cannot post a deflate message: {:?}\n", e);
                    Counters::add(&self.counters.device_errors, 1);
                    break;
                }
            }
            sent += 1;
        }
        let waited = if who == Waiter::Pressure {
            self.wait_until(state, &mut done, who, |e| {
                mine.iter()
                    .flatten()
                    .all(|(t, _)| e.sent(t) != Sent::InFlight)
            })
        } else {
            self.wait_until(state, &mut done, who, |e| e.in_flight() == 0)
        };
        freed = freed.saturating_add(self.settled(state, &mut mine));
        match waited {
            // Timeouts were logged once (`timed_out`), a dead device once, and a stopping
            // worker leaves the rest to teardown.
            Err(e) if e == ETIMEDOUT || e == EINTR || self.dead.load(Relaxed) => {}
            Err(e) => dev_warn!(self.dev, "deflate message not delivered ({:?})\n", e),
            Ok(()) => {}
        }
        freed
    }

    /// Takes the messages of `mine` that the device handed back (or that went to a deflate
    /// queue it broke, whose pages went back untold, when it need not be told) out of it;
    /// returns their 4 KiB pages, now the guest's.
    fn settled(&self, state: &StateGuard<'_>, mine: &mut [Option<(Ticket, u32)>]) -> u32 {
        let mut n = 0u32;
        for entry in mine.iter_mut() {
            let Some((ticket, pages)) = *entry else {
                continue;
            };
            let gone = match state.engine.sent(&ticket) {
                Sent::Done => true,
                Sent::Lost => !self.has(F_MUST_TELL_HOST),
                Sent::InFlight => false,
            };
            if gone {
                *entry = None;
                n = n.saturating_add(pages);
            }
        }
        n
    }

    /// One step toward the target; true if more steps are needed.
    fn update_step(&self) -> bool {
        if self.dead.load(Relaxed) {
            return false;
        }
        let target = match self.target() {
            Ok(t) => t,
            Err(e) => {
                dev_err!(self.dev, "cannot read the target: {:?}\n", e);
                return false;
            }
        };
        let (current, can_grow) = {
            let s = self.state.lock();
            (s.engine.num_pages(), !s.inflate_lost)
        };
        // Deflating found every page left isolated by compaction: look again shortly.
        let mut isolated = false;
        let done = match target.cmp(&current) {
            // Memory pressure deflated us: wait for a new target before inflating again.
            core::cmp::Ordering::Greater if self.pressure_hold.load(Relaxed) => return false,
            // The inflate queue is broken (logged when it was seen).
            core::cmp::Ordering::Greater if !can_grow => return false,
            core::cmp::Ordering::Greater => {
                let (added, short) = self.fill(target - current);
                if added == 0 || short {
                    // Out of memory, the reserve reached (or the device is gone): retry
                    // later, politely, backing off while the guest cannot spare more.
                    let ms = match self.backoff_ms.load(Relaxed) {
                        0 => ALLOC_RETRY_MS,
                        ms => ms.saturating_mul(2).min(ALLOC_RETRY_MAX_MS),
                    };
                    self.backoff_ms.store(ms, Relaxed);
                    fsleep(Delta::from_millis(ms.into()));
                } else {
                    self.backoff_ms.store(0, Relaxed);
                }
                added
            }
            core::cmp::Ordering::Less => {
                let freed = self.leak(current - target, Waiter::Worker);
                if freed == 0 && self.list.isolated() != 0 {
                    isolated = true;
                    fsleep(Delta::from_millis(10));
                }
                freed
            }
            core::cmp::Ordering::Equal => 0,
        };
        let (now, stuck) = {
            let s = self.state.lock();
            let now = s.engine.num_pages();
            (
                now,
                self.dead.load(Relaxed) || (target > now && s.inflate_lost),
            )
        };
        self.write_actual(now);
        target != now && !stuck && (done != 0 || target > now || isolated)
    }

    /// Deflates everything, telling the device (teardown); stops early if the device does
    /// not answer (the caller resets it and releases the rest).  Pages compaction has
    /// isolated come back within moments (the migration callback refuses once `stop` is set),
    /// so it waits for them a little.
    pub(crate) fn leak_all(&self) {
        // TIMEOUT: compaction puts an isolated page back or migrates it in one call.
        const ISOLATED_WAIT_MS: u32 = 1000;
        let mut waited = 0;
        while !self.dead.load(Relaxed) {
            let current = self.state.lock().engine.num_pages();
            if current == 0 {
                break;
            }
            if self.leak(current, Waiter::Teardown) != 0 {
                waited = 0;
                continue;
            }
            // Nothing could leave: every page left is isolated, or the device failed.
            if waited >= ISOLATED_WAIT_MS || self.list.isolated() == 0 {
                break;
            }
            fsleep(Delta::from_millis(1));
            waited += 1;
        }
    }

    /// After the device was reset: releases every page still held, in flight or in the
    /// balloon, without telling the (reset) device.  Waits for pages compaction has
    /// isolated from the list: the core still points to the balloon while it holds one.
    pub(crate) fn release_everything(&self) {
        let mut lost = 0;
        let mut waited_ms: u32 = 0;
        loop {
            let mut state = self.state.lock();
            lost += state.engine.release_all();
            let held = state.engine.pages_held();
            drop(state);
            if held == 0 {
                break;
            }
            // TIMEOUT: none; the core gives isolated pages back within one compaction call
            // (the migration callback refuses once `stop` is set), and freeing the list
            // before would leave it pointing to freed memory.  Said once after 5 s.
            if waited_ms == 5000 {
                dev_warn!(
                    self.dev,
                    "{} pages still isolated by compaction after 5 s; waiting\n",
                    held
                );
            }
            fsleep(Delta::from_millis(1));
            waited_ms = waited_ms.saturating_add(1);
        }
        if lost != 0 {
            dev_warn!(
                self.dev,
                "freed {} pages the device was not told about\n",
                lost
            );
        }
        // The statistics buffer and a report the device did not return: nothing to free,
        // but the queues must be empty when they go.
        let mut state = self.state.lock();
        if let Some(vqs) = state.engine.host.vqs.as_mut() {
            for slot in [STATS, self.report_slot] {
                if let Some(vq) = vqs.get(slot) {
                    while vq.detach_unused().is_some() {}
                }
            }
        }
        self.counters.pages_held.store(0, Relaxed);
        self.counters.set_aside.store(0, Relaxed);
    }
}
