// SPDX-License-Identifier: GPL-2.0

//! The balloon's waits for the device, and what a misbehaving device costs: completing what
//! the device handed back, the timeouts and what each waiter pays for one, broken queues,
//! freezing the balloon (README, "A misbehaving device").
//!
//! No `unsafe`.

use crate::{
    config::F_MUST_TELL_HOST,
    device::DeviceHost,
    engine::{
        Dir,
        Engine,
        Progress, //
    },
    shared::{
        BalloonShared,
        StateGuard, //
    },
    stats::Counters,
};
use kernel::{
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        CondVarTimeoutResult, //
    },
    time::{
        delay::fsleep,
        msecs_to_jiffies,
        Delta,
        Instant,
        Jiffies,
        Monotonic, //
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

impl BalloonShared {
    /// Completes what the device handed back, updating the counters; adds it to `done`.
    pub(crate) fn reap_locked(&self, state: &mut StateGuard<'_>, done: &mut Progress) -> Result {
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
    pub(crate) fn count(&self, state: &StateGuard<'_>, p: Progress, done: &mut Progress) {
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
    pub(crate) fn wait_until(
        &self,
        state: &mut StateGuard<'_>,
        done: &mut Progress,
        who: Waiter,
        ready: impl Fn(&Engine<DeviceHost>) -> bool,
    ) -> Result {
        let timeout = msecs_to_jiffies(ACK_TIMEOUT_MS);
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
            self.wait_acked(state, &mut left, ACK_POLL_MS, Some(&self.counters.wait_ns));
        }
    }

    /// Sleeps on [`BalloonShared::acked`] for the next slice of a wait that has `left` jiffies
    /// to go: at most `poll_ms`, less when less is left.  Takes the slice off `left` and gives
    /// back what a wake-up left unslept; adds the time slept on the condition variable to
    /// `spent`, if given.
    ///
    /// A caller with a signal pending (a task in the OOM path; not expected in kernel threads,
    /// which take no signals) cannot sleep interruptibly: it sleeps `poll_ms` uninterruptibly
    /// instead of spinning.
    pub(crate) fn wait_acked(
        &self,
        state: &mut StateGuard<'_>,
        left: &mut Jiffies,
        poll_ms: u32,
        spent: Option<&Atomic<u64>>,
    ) {
        let slice = (*left).min(msecs_to_jiffies(poll_ms).max(1));
        *left -= slice;
        let timed = spent.map(|c| (c, Instant::<Monotonic>::now()));
        let woke = self.acked.wait_interruptible_timeout(state, slice);
        if let Some((c, t)) = timed {
            Counters::add_time(c, t);
        }
        match woke {
            CondVarTimeoutResult::Timeout => {}
            CondVarTimeoutResult::Woken { jiffies } => *left += jiffies,
            CondVarTimeoutResult::Signal { .. } => fsleep(Delta::from_millis(poll_ms.into())),
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
}
