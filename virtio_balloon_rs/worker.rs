// SPDX-License-Identifier: GPL-2.0

//! The balloon's worker: inflate, deflate, the waits for the device, freezing a balloon
//! whose device misbehaves, teardown's release of every page; the work items, and the
//! callbacks of the device, memory pressure, page reporting and migration.
//!
//! One `unsafe` block: `flush_work()` on the balloon's own work items, which the kernel
//! crate does not wrap in 7.2.

use crate::{
    abi::Sg,
    config::{
        CONFIG_ACTUAL,
        CONFIG_NUM_PAGES,
        CONFIG_POISON_VAL,
        DEFLATE,
        F_MUST_TELL_HOST,
        INFLATE,
        REPORT_TOKEN,
        STATS,
        STATS_TOKEN, //
    },
    device::DeviceHost,
    engine::{
        Dir,
        Engine,
        Progress,
        Sent,
        Ticket, //
    },
    migrate::{
        Migrate,
        PageRef, //
    },
    mm::{
        self,
        BalloonPage,
        MemSnapshot,
        PAGES_PER_PAGE, //
    },
    pressure::{
        Deflate,
        Pressure, //
    },
    reporting::Report,
    shared::{
        BalloonShared,
        StateGuard, //
    },
    stats::{
        self,
        Counters, //
    },
};
use kernel::{
    dma::Coherent,
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
    workqueue::{
        self,
        Work,
        WorkItem, //
    },
};

/// Who waits for the device, which decides what a timeout costs ([`BalloonShared::wait_until`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// The update worker, moving toward the target.
    Worker,
    /// Memory pressure: the shrinker, the OOM notifier, compaction's migration callback.
    Pressure,
    /// Teardown, which resets the device afterwards.
    Teardown,
}

/// How long a wait for the device lasts when the device hands nothing back meanwhile.
// TIMEOUT: QEMU answers within microseconds; a device silent for 5 s is slow at best.
const ACK_TIMEOUT_MS: u32 = 5000;
/// Waits of [`ACK_TIMEOUT_MS`] in a row, with nothing handed back in between, after which
/// the worker takes the device for broken and freezes the balloon (15 s of silence).
const ACK_TIMEOUTS_TO_FREEZE: u32 = 3;
/// How often a wait for the device looks at the used rings itself, whether or not the
/// acknowledgement work woke it: the news of a completion may come late under memory
/// pressure, the completion itself is in the ring.
const ACK_POLL_MS: u32 = 100;

/// How long a report may stay with the device before reporting stops for good.
// TIMEOUT: QEMU discards the ranges of a report (at most 32 blocks of 4 MiB) in
// milliseconds; the page reporting core, and unbind after it, wait for this callback.
pub(crate) const REPORT_TIMEOUT_MS: u32 = 5000;
/// How often a report in flight checks whether its queue broke (a removed device breaks its
/// queues without an interrupt).
const REPORT_POLL_MS: u32 = 100;

/// First back-off after a failed page allocation, before the worker retries; it doubles up
/// to [`ALLOC_RETRY_MAX_MS`] while allocations keep failing.
const ALLOC_RETRY_MS: u32 = 200;
/// Longest back-off between inflation attempts.
const ALLOC_RETRY_MAX_MS: u32 = 5000;

/// Messages per run of the update work item; it requeues itself for more, so that teardown
/// and memory pressure get the lock in between.
const MSGS_PER_RUN: usize = 16;

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
        this.state.lock().ack_pending = true;
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

impl Deflate for BalloonShared {
    fn reclaimable(&self) -> u64 {
        self.counters.pages_held.load(Relaxed)
    }

    fn deflate(&self, pages: u64, why: Pressure) -> u64 {
        // Never wait for the balloon here: the worker may hold the lock while it allocates,
        // which is what got us called.
        let Some(mut state) = self.state.try_lock() else {
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
            let slice = left.min(msecs_to_jiffies(REPORT_POLL_MS).max(1));
            left -= slice;
            match self.acked.wait_interruptible_timeout(&mut state, slice) {
                kernel::sync::CondVarTimeoutResult::Timeout => {}
                kernel::sync::CondVarTimeoutResult::Woken { jiffies } => left += jiffies,
                // Not expected in the page reporting worker (kernel threads take no signals);
                // sleep instead of spinning.
                kernel::sync::CondVarTimeoutResult::Signal { .. } => {
                    fsleep(Delta::from_millis(REPORT_POLL_MS.into()));
                }
            }
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

    /// Waits until neither work item is queued or running.  With `stop` set, they do not
    /// requeue themselves, and the callbacks queue nothing new but acks.
    pub(crate) fn flush_work(&self) {
        // SAFETY: The work items are initialized (pinned in `self`) and live as long as it.
        unsafe {
            kernel::bindings::flush_work(Work::<Self, 0>::raw_get(&self.update));
            kernel::bindings::flush_work(Work::<Self, 1>::raw_get(&self.ack));
            kernel::bindings::flush_work(Work::<Self, 2>::raw_get(&self.stats));
            kernel::bindings::flush_work(Work::<Self, 3>::raw_get(&self.hint_work));
        }
    }

    /// Sends fresh statistics: the first buffer at probe (`initial`), then each time the
    /// device returns the buffer (`stats_handle_request()` in C).  If they cannot be read (an
    /// allocation failed), the device gets the buffer back with the previous ones (all
    /// zero at probe), so that it asks again at its next interval: it would never ask again
    /// without the buffer.
    pub(crate) fn send_stats(&self, initial: bool) {
        // Read the counters before taking the lock: this allocates.
        let snapshot = MemSnapshot::now();
        // Test flavour: the read fails, as an allocation failure there would.
        #[cfg(virtio_rs_kunit)]
        let snapshot = if crate::testing::fail_stats() {
            Err(ENOMEM)
        } else {
            snapshot
        };
        let mut state = self.state.lock();
        let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(STATS)) else {
            return;
        };
        if !initial && vq.get_buf().is_none() {
            return;
        }
        let values = match snapshot {
            Ok(m) => Some(stats::tag_values(&m)),
            Err(e) => {
                if self.counters.stats_failures.load(Relaxed) == 0 {
                    dev_warn!(
                        self.dev,
                        "cannot read memory statistics ({:?}): sending the previous ones (logged once)\n",
                        e
                    );
                }
                Counters::add(&self.counters.stats_failures, 1);
                None
            }
        };
        if let Some(values) = &values {
            let bytes = stats::encode(values);
            for (i, b) in bytes.iter().enumerate() {
                if fill_byte(&state.stats_buf, i, *b).is_err() {
                    return;
                }
            }
        }
        let sg = Sg::new(state.stats_buf.device_addr(), stats::BUF_SIZE as u32);
        let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(STATS)) else {
            return;
        };
        if let Err(e) = vq.add_outbuf(sg, STATS_TOKEN) {
            dev_warn!(self.dev, "cannot queue the statistics: {:?}\n", e);
            Counters::add(&self.counters.device_errors, 1);
            return;
        }
        vq.kick();
        if let Some(values) = values {
            for (slot, v) in self.counters.last_stats.iter().zip(values) {
                slot.store(v, Relaxed);
            }
        }
        Counters::add(&self.counters.stats_sent, 1);
    }

    pub(crate) fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// The balloon size the device asks for, in 4 KiB pages, rounded to whole guest pages.
    fn target(&self) -> Result<u32> {
        let num = self.vdev.read(CONFIG_NUM_PAGES)?;
        let num = num
            .checked_next_multiple_of(PAGES_PER_PAGE)
            .unwrap_or(u32::MAX);
        self.counters.target.store(num.into(), Relaxed);
        Ok(num)
    }

    /// Tells the device what freed guest pages hold (`poison_val`), in one 32-bit access,
    /// and keeps what it reads back for debugfs.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the device's configuration has no `poison_val`.
    pub(crate) fn write_poison(&self, val: u32) -> Result {
        self.vdev.write(CONFIG_POISON_VAL, val)?;
        let seen = self.vdev.read(CONFIG_POISON_VAL)?;
        self.counters.poison_val.store(seen.into(), Relaxed);
        Ok(())
    }

    pub(crate) fn write_actual(&self, num_pages: u32) {
        self.counters.actual.store(num_pages.into(), Relaxed);
        // One 32-bit access: QEMU acts on every configuration write.
        if let Err(e) = self.vdev.write(CONFIG_ACTUAL, num_pages) {
            dev_warn!(self.dev, "cannot write actual: {:?}\n", e);
        }
    }

    /// Completes what the device handed back, updating the counters; adds it to `done`.
    fn reap_locked(&self, state: &mut StateGuard<'_>, done: &mut Progress) -> Result {
        let p = state.engine.reap().inspect_err(|_| {
            dev_err!(
                self.dev,
                "the device handed back a message it was not given\n"
            );
            Counters::add(&self.counters.device_errors, 1);
        })?;
        if p != Progress::default() {
            state.silent_waits = 0;
            state.answers = state.answers.wrapping_add(1);
        }
        self.count(state, p, done);
        Ok(())
    }

    /// Counts pages that joined or left the balloon; adds them to `done`.
    fn count(&self, state: &StateGuard<'_>, p: Progress, done: &mut Progress) {
        if p.inflated != 0 {
            Counters::add(&self.counters.inflated, p.inflated.into());
        }
        if p.deflated != 0 {
            Counters::add(&self.counters.deflated, p.deflated.into());
        }
        done.inflated += p.inflated;
        done.deflated += p.deflated;
        self.counters
            .pages_held
            .store(state.engine.pages_held() as u64, Relaxed);
    }

    /// Freezes the balloon (see [`BalloonShared::dead`]), saying why once.
    fn freeze(&self, state: &StateGuard<'_>, why: core::fmt::Arguments<'_>) {
        if !self.dead.xchg(true, Relaxed) {
            dev_err!(
                self.dev,
                "{}: balloon frozen at {} pages until unbound\n",
                why,
                state.engine.num_pages()
            );
        }
    }

    /// Handles a queue the device broke since the last look (the ring logged the violation;
    /// this says once what it means for the balloon):
    ///
    /// - inflate: the messages in flight there are lost, their pages set aside until
    ///   teardown (the device may hold them), and the balloon grows no more;
    /// - deflate, when the device need not be told: the messages in flight there go back to
    ///   the guest, and so does every page deflated from now on, untold;
    /// - deflate with VIRTIO_BALLOON_F_MUST_TELL_HOST: no page may leave the balloon, which
    ///   freezes.
    ///
    /// A balloon whose message slots are all lost freezes too.
    fn check_queues(&self, state: &mut StateGuard<'_>, done: &mut Progress) {
        if !state.inflate_lost && state.engine.host.broken(Dir::Inflate) {
            state.inflate_lost = true;
            Counters::add(&self.counters.device_errors, 1);
            let n = state.engine.lose(Dir::Inflate);
            self.counters
                .set_aside
                .store(state.engine.set_aside() as u64, Relaxed);
            dev_err!(
                self.dev,
                "inflate queue broken: the balloon grows no more until unbound ({} pages in flight set aside)\n",
                n
            );
        }
        if !state.deflate_lost && state.engine.host.broken(Dir::Deflate) {
            state.deflate_lost = true;
            Counters::add(&self.counters.device_errors, 1);
            if self.has(F_MUST_TELL_HOST) {
                self.freeze(
                    state,
                    format_args!("deflate queue broken and the device must be told"),
                );
            } else {
                let n = state.engine.lose(Dir::Deflate);
                let p = Progress {
                    deflated: n,
                    ..Progress::default()
                };
                self.count(state, p, done);
                dev_err!(
                    self.dev,
                    "deflate queue broken: pages leave the balloon without telling the device from now on\n"
                );
            }
        }
        if state.engine.slots_left() == 0 {
            self.freeze(
                state,
                format_args!("every message slot is on a broken queue"),
            );
        }
    }

    /// Completes messages until `ready` holds, waiting for the device at most
    /// [`ACK_TIMEOUT_MS`] while it hands nothing back; adds what completed to `done`.  Looks at
    /// the used rings every [`ACK_POLL_MS`] as well as when woken, so a late wake-up costs
    /// latency, never the balloon.
    ///
    /// A timeout is evidence of a silent device, and `who` decides what it costs (README, "A
    /// misbehaving device"):
    ///
    /// - [`Waiter::Pressure`]: nothing; the caller gives back what completed and returns;
    /// - [`Waiter::Worker`]: the balloon freezes after [`ACK_TIMEOUTS_TO_FREEZE`] timeouts in a
    ///   row (whoever waited) with nothing handed back in between;
    /// - [`Waiter::Teardown`]: the balloon freezes at once (the caller resets the device and
    ///   releases everything).
    ///
    /// A device that is gone (all-ones reads) or broke a queue freezes or shrinks the
    /// balloon at once through [`Self::check_queues`]: the transport breaks the queues.
    ///
    /// # Errors
    ///
    /// `EIO` if a queue is broken or gone or the device misbehaved, `ETIMEDOUT` if the
    /// device handed nothing back for [`ACK_TIMEOUT_MS`], `EINTR` if the worker was told
    /// to stop (teardown takes over).
    fn wait_until(
        &self,
        state: &mut StateGuard<'_>,
        done: &mut Progress,
        who: Waiter,
        ready: impl Fn(&Engine<DeviceHost>) -> bool,
    ) -> Result {
        let timeout = msecs_to_jiffies(ACK_TIMEOUT_MS);
        let poll = msecs_to_jiffies(ACK_POLL_MS).max(1);
        let mut left = timeout;
        let mut seen = state.answers;
        loop {
            if state.engine.host.vqs.is_none() {
                return Err(EIO);
            }
            self.reap_locked(state, done)?;
            self.check_queues(state, done);
            if ready(&state.engine) {
                return Ok(());
            }
            if self.dead.load(Relaxed) {
                return Err(EIO);
            }
            if who == Waiter::Worker && self.stop.load(Relaxed) {
                return Err(EINTR);
            }
            if state.answers != seen {
                // The device is alive (whoever took its answer while this waited): the
                // timeout counts from its last answer.
                seen = state.answers;
                left = timeout;
            }
            if state.ack_pending {
                state.ack_pending = false;
                continue;
            }
            if left == 0 {
                return Err(self.timed_out(state, who));
            }
            let slice = left.min(poll);
            left -= slice;
            let t = Instant::<Monotonic>::now();
            let woke = self.acked.wait_interruptible_timeout(state, slice);
            Counters::add_time(&self.counters.wait_ns, t);
            match woke {
                kernel::sync::CondVarTimeoutResult::Timeout => {}
                kernel::sync::CondVarTimeoutResult::Woken { jiffies } => left += jiffies,
                // The caller has a signal pending (a task in the OOM path): the wait cannot
                // sleep, so sleep uninterruptibly instead of spinning.
                kernel::sync::CondVarTimeoutResult::Signal { .. } => {
                    fsleep(Delta::from_millis(ACK_POLL_MS.into()));
                }
            }
        }
    }

    /// A wait of `who` found the device silent for [`ACK_TIMEOUT_MS`]: counts it, logs the
    /// first one, and freezes the balloon if `who` may (see [`Self::wait_until`]); returns
    /// the error of the wait.
    fn timed_out(&self, state: &mut StateGuard<'_>, who: Waiter) -> Error {
        state.silent_waits = state.silent_waits.saturating_add(1);
        Counters::add(&self.counters.device_errors, 1);
        Counters::add(&self.counters.ack_timeouts, 1);
        let freeze = match who {
            Waiter::Pressure => false,
            Waiter::Worker => state.silent_waits >= ACK_TIMEOUTS_TO_FREEZE,
            Waiter::Teardown => true,
        };
        if freeze {
            self.freeze(
                state,
                format_args!(
                    "the device handed nothing back in {} waits of {} ms",
                    state.silent_waits, ACK_TIMEOUT_MS
                ),
            );
        } else if !state.slow_logged {
            state.slow_logged = true;
            dev_warn!(
                self.dev,
                "the device handed nothing back in {} ms; carrying on (logged once)\n",
                ACK_TIMEOUT_MS
            );
        }
        ETIMEDOUT
    }

    /// Inflates by up to `want` 4 KiB pages, in at most [`MSGS_PER_RUN`] messages; returns
    /// how many joined the balloon, and whether the guest could not spare what was asked
    /// (allocation failed or the reserve was reached).
    fn fill(&self, want: u32) -> (u32, bool) {
        let mut left = (want / PAGES_PER_PAGE) as usize;
        // Allocated outside the lock; pages that could not be posted are freed at the end.
        let msg = self.state.lock().engine.msg_pages();
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
            BalloonPage::alloc_bulk(&mut batch, n.saturating_sub(have));
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
    fn leak_locked(
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

/// Writes byte `i` of a DMA buffer.
///
/// # Errors
///
/// `EINVAL` if `i` is out of bounds.
fn fill_byte(buf: &Coherent<[u8]>, i: usize, b: u8) -> Result {
    kernel::dma_write!(buf, [try: i], b);
    Ok(())
}
