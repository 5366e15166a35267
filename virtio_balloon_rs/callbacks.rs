// SPDX-License-Identifier: GPL-2.0

//! What the kernel and the device call the balloon for: used buffers and configuration
//! changes (interrupt context, which queues work), memory pressure (the shrinker and the
//! OOM notifier deflate), compaction's migration of a balloon page, and free page reporting.
//!
//! No `unsafe` (the C side of each callback is in `pressure.rs`, `mm/migrate.rs` and
//! `mm/reporting.rs`).

use crate::{
    abi::Sg,
    config::{
        DEFLATE,
        INFLATE,
        REPORT_TOKEN,
        STATS, //
    },
    engine::{
        Dir,
        Progress,
        Sent, //
    },
    migrate::{
        Migrate,
        PageRef, //
    },
    mm::PAGES_PER_PAGE,
    pressure::{
        Deflate,
        Pressure, //
    },
    reporting::Report,
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
        Arc,
        ArcBorrow, //
    },
    time::{
        delay::fsleep,
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
    workqueue,
};

/// How long memory pressure waits for a balloon that is busy for a moment (another part of
/// the driver holds its lock: the acknowledgement work, the worker posting a message, a
/// migration) before it gives nothing back.
// TIMEOUT: those hold the lock for microseconds, but a guest's CPU can be preempted by the
// host inside; and the wait must end, in case the holder is waiting for memory itself.
pub(crate) const PRESSURE_LOCK_MS: i64 = 1000;

/// How long a report may stay with the device before reporting stops for good.
// TIMEOUT: QEMU discards the ranges of a report (at most 32 blocks of 4 MiB) in
// milliseconds; the page reporting core, and unbind after it, wait for this callback.
pub(crate) const REPORT_TIMEOUT_MS: u32 = 5000;
/// How often a report in flight checks whether its queue broke (a removed device breaks its
/// queues without an interrupt).
const REPORT_POLL_MS: u32 = 100;

impl Migrate for BalloonShared {
    fn migrate(&self, new: PageRef<'_>, old: PageRef<'_>) -> Result {
        // Never wait for the balloon here: compaction may run inside the worker's
        // allocations, and teardown takes every page back.
        let refused = || {
            Counters::add(&self.counters.migrate_failures, 1);
            Err(EAGAIN)
        };
        if self.stop.load(Relaxed) || self.dead.load(Relaxed) {
            return refused();
        }
        let Some(mut state) = self.state.try_lock() else {
            return refused();
        };
        if state.inflate_lost || state.deflate_lost || !state.engine.has_free_slot() {
            return refused();
        }
        let r = self.migrate_locked(&mut state, &new, &old);
        let now = state.engine.num_pages();
        let idle = state.engine.in_flight() == 0;
        drop(state);
        match r {
            Ok(()) => Counters::add(&self.counters.migrated, 1),
            Err(_) => {
                Counters::add(&self.counters.migrate_failures, 1);
                // The balloon may have kept the new page besides the old one (the device took
                // it): say so.  Only a failing device gets here, so the worker is not asked
                // to move back toward the target before the next one.
                if idle {
                    self.write_actual(now);
                }
            }
        }
        r
    }
}

impl BalloonShared {
    /// Queue `slot` has used buffers (interrupt context).
    pub(crate) fn vq_interrupt(this: ArcBorrow<'_, Self>, slot: usize) {
        match slot {
            // Wake the worker, or the report in flight, from process context (both sleep
            // under the state mutex).  First: without STATS_VQ, the reporting queue takes the
            // stats queue's request slot.
            // On the module's reclaim-safe queue: a balloon giving memory back under pressure
            // waits for this.
            s if s == this.report_slot => {
                let _ = crate::wq::with_queue(|q| q.enqueue::<Arc<Self>, 1>(this.into()));
            }
            // Hinting polls its queue (interrupts are off there).
            s if s == this.hint_slot => {}
            INFLATE | DEFLATE => {
                let _ = crate::wq::with_queue(|q| q.enqueue::<Arc<Self>, 1>(this.into()));
            }
            // The device returned the statistics buffer: refresh and resend it.
            STATS if !this.stop.load(Relaxed) => {
                let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 2>(this.into());
            }
            _ => {}
        }
    }

    /// The device configuration changed (interrupt context).
    pub(crate) fn config_changed(this: ArcBorrow<'_, Self>) {
        // A new target: memory pressure no longer holds inflation back.
        this.pressure_hold.store(false, Relaxed);
        if !this.stop.load(Relaxed) {
            let _ = workqueue::system_freezable().enqueue::<Arc<Self>, 0>(this.into());
            // Perhaps a new free page hinting command: look, unless a look is pending.
            if this.hint.as_ref().is_some_and(|h| h.config_changed()) {
                this.queue_hint_work();
            }
        }
    }
}

impl Deflate for BalloonShared {
    fn reclaimable(&self) -> u64 {
        self.counters.pages_held.load(Relaxed)
    }

    fn deflate(&self, pages: u64, why: Pressure) -> u64 {
        let Some(mut state) = self.lock_for_pressure() else {
            return 0;
        };
        let want = usize::try_from(pages).unwrap_or(usize::MAX);
        // Pages are released only once the device took the deflate message: what `leak`
        // reports is what the guest got back.
        let freed = self.leak_locked(&mut state, want, usize::MAX, Waiter::Pressure);
        let now = state.engine.num_pages();
        let idle = state.engine.in_flight() == 0;
        drop(state);
        if freed != 0 {
            self.pressure_hold.store(true, Relaxed);
            if idle {
                self.write_actual(now);
            }
            let c = match why {
                Pressure::Oom => &self.counters.oom_deflated,
                Pressure::Shrinker => &self.counters.shrinker_deflated,
            };
            Counters::add(c, freed.into());
        }
        u64::from(freed / PAGES_PER_PAGE)
    }
}

impl BalloonShared {
    /// The balloon's lock for a shrinker or OOM notifier call, or `None` if it stayed busy
    /// for [`PRESSURE_LOCK_MS`] (counted in `pressure_busy`).
    ///
    /// Never blocks on the lock: a holder that allocates would wait for this very call.
    /// Nor gives up at the first try: a single OOM notifier call that gives nothing back
    /// makes the kernel kill a process, and the lock is taken for a moment after every
    /// interrupt (`WorkItem<1>`).
    fn lock_for_pressure(&self) -> Option<StateGuard<'_>> {
        let t = Instant::<Monotonic>::now();
        loop {
            if let Some(state) = self.state.try_lock() {
                return Some(state);
            }
            if self.stop.load(Relaxed) || t.elapsed().as_millis() >= PRESSURE_LOCK_MS {
                Counters::add(&self.counters.pressure_busy, 1);
                return None;
            }
            fsleep(Delta::from_millis(1));
        }
    }
}

impl Report for BalloonShared {
    fn report(&self, ranges: &[Sg]) -> Result {
        let t = Instant::<Monotonic>::now();
        let done = self.report_free(ranges);
        Counters::add_time(&self.counters.report_ns, t);
        match done {
            Ok(()) => {
                let bytes = ranges.iter().map(|r| u64::from(r.len)).sum();
                Counters::add(&self.counters.reported_bytes, bytes);
                Counters::add(&self.counters.reports, 1);
            }
            Err(_) => Counters::add(&self.counters.report_errors, 1),
        }
        done
    }
}

impl BalloonShared {
    /// Hands the free ranges of one report to the device as one buffer it may write (it
    /// discards the memory behind them), and waits until the device returns it, at most
    /// [`REPORT_TIMEOUT_MS`] (`virtballoon_free_page_report()` in C, which waits forever).
    /// Allocates nothing: the reported pages are out of the allocator meanwhile.
    ///
    /// # Errors
    ///
    /// `ENODEV` without a reporting queue, `EIO` if the queue is broken or an earlier report
    /// failed, `ETIMEDOUT` if the device kept the report for [`REPORT_TIMEOUT_MS`], or the
    /// error of adding the buffer.
    fn report_free(&self, ranges: &[Sg]) -> Result {
        let slot = self.report_slot;
        let mut state = self.state.lock();
        if state.report_lost {
            return Err(EIO);
        }
        let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(slot)) else {
            return Err(ENODEV);
        };
        // With no report in flight, the queue (no indirect descriptors, at least as many
        // entries as a report has ranges: see the registration's capacity) has room for one.
        if let Err(e) = vq.add_inbufs(ranges, REPORT_TOKEN) {
            self.lose_reporting(&mut state, format_args!("cannot post a report ({:?})", e));
            return Err(e);
        }
        // The buffer is the device's now: a failed notification shows up below.
        vq.kick();
        let mut left = msecs_to_jiffies(REPORT_TIMEOUT_MS);
        loop {
            let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(slot)) else {
                // Not reached: teardown unregisters before the queues go.
                return Err(EIO);
            };
            // The ring checks the id against what it handed out: one buffer, this report.
            if vq.get_buf().is_some() {
                return Ok(());
            }
            if vq.is_broken() {
                self.lose_reporting(&mut state, format_args!("reporting queue broken"));
                return Err(EIO);
            }
            if left == 0 {
                self.lose_reporting(
                    &mut state,
                    format_args!("the device kept a report for {} ms", REPORT_TIMEOUT_MS),
                );
                return Err(ETIMEDOUT);
            }
            self.wait_acked(&mut state, &mut left, REPORT_POLL_MS, None);
        }
    }

    /// Stops reporting for good, saying why once.
    fn lose_reporting(&self, state: &mut StateGuard<'_>, why: core::fmt::Arguments<'_>) {
        if !state.report_lost {
            state.report_lost = true;
            Counters::add(&self.counters.device_errors, 1);
            dev_err!(
                self.dev,
                "{}: free page reporting stops until unbound\n",
                why
            );
        }
    }

    /// Moves the balloon from `old` to `new` (the migration callback, under the state lock):
    /// tells the device that `new` is in the balloon, then that `old` is not, waiting for the
    /// device each time.  On failure the core puts `old` back, so a new page the device may
    /// have taken stays with the balloon: in it, or with the message that names it.
    ///
    /// # Errors
    ///
    /// `EBUSY` if no message slot is free, `EIO` if the device did not take a message, or
    /// the error of posting the inflate message.
    fn migrate_locked(
        &self,
        state: &mut StateGuard<'_>,
        new: &PageRef<'_>,
        old: &PageRef<'_>,
    ) -> Result {
        let mut done = Progress::default();
        let ticket = state.engine.post_pfns(Dir::Inflate, new.pfns())?;
        let _ = self.wait_until(state, &mut done, Waiter::Pressure, |e| {
            e.sent(&ticket) != Sent::InFlight
        });
        if state.engine.sent(&ticket) != Sent::Done {
            // The device may still read the message: the page must not go back to the
            // guest before a reset (or joins the balloon if the device takes it late).
            let _ = state.engine.adopt(&ticket, new.get());
            self.counters
                .set_aside
                .store(state.engine.set_aside() as u64, Relaxed);
            return Err(EIO);
        }
        // The device took `new` (or was reset by a teardown that started meanwhile): from
        // here on, a failure keeps it in the balloon, which teardown empties.
        let told = self
            .wait_until(state, &mut done, Waiter::Pressure, |e| e.has_free_slot())
            .and_then(|()| {
                if state.deflate_lost || self.stop.load(Relaxed) {
                    return Err(EAGAIN);
                }
                state.engine.post_pfns(Dir::Deflate, old.pfns())
            })
            .and_then(|ticket| {
                let _ = self.wait_until(state, &mut done, Waiter::Pressure, |e| {
                    e.sent(&ticket) != Sent::InFlight
                });
                match state.engine.sent(&ticket) {
                    Sent::Done => Ok(()),
                    // The device may read it late: then it thinks `old` is back with the guest
                    // while the balloon keeps it, which is safe.
                    Sent::InFlight | Sent::Lost => Err(EIO),
                }
            });
        if told.is_err() {
            state.engine.enlist_one(new.get());
            self.counters
                .pages_held
                .store(state.engine.pages_held() as u64, Relaxed);
            return Err(EIO);
        }
        Ok(())
    }
}
