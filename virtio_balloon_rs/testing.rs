// SPDX-License-Identifier: GPL-2.0

//! Fault injection for the integration tests, compiled only into the test flavour of the
//! module (`--cfg virtio_rs_kunit`): the production `.ko` carries none of it.  The switches
//! live in `/sys/kernel/debug/virtio_balloon_rs_testing/`:
//!
//! | file | what |
//! |---|---|
//! | `ack_delay_ms` | `N`: the work item that tells a waiting balloon the device used a buffer sleeps `N` ms first, as when no kworker can be had under memory pressure; the device itself is as fast as ever |
//! | `ack_hold_ms` | `N`: that work item holds the balloon's lock `N` ms, as when the host preempts the guest CPU running it; memory pressure must wait for the lock rather than give nothing back |
//! | `fail_stats` | `N`: the next `N` reads of the memory statistics fail, as an allocation failure there would |
//! | `live` | what the module holds now: `balloons` (balloon states not yet freed, counted by their [`Counters`](crate::stats::Counters)), `hooks` (OOM notifiers and shrinkers registered), so that a test can check that a failed probe or an unbind left nothing behind |

use crate::abi::switches::{
    count_down,
    switch,
    Switch, //
};
use kernel::{
    debugfs, fmt,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

/// Milliseconds the acknowledgement work sleeps before waking the balloon.
static ACK_DELAY_MS: Atomic<u32> = Atomic::new(0);

/// Milliseconds the acknowledgement work holds the balloon's lock.
static ACK_HOLD_MS: Atomic<u32> = Atomic::new(0);

/// Reads of the memory statistics still to fail.
static FAIL_STATS: Atomic<u32> = Atomic::new(0);

/// Balloon states alive (their counters, which every part of a balloon holds).
pub(crate) static LIVE_BALLOONS: Atomic<i32> = Atomic::new(0);

/// OOM notifiers and shrinkers registered.
pub(crate) static LIVE_HOOKS: Atomic<i32> = Atomic::new(0);

/// Counts one more (`up`) or one fewer live object in `v`.
pub(crate) fn live(v: &Atomic<i32>, up: bool) {
    v.add(if up { 1 } else { -1 }, Relaxed);
}

/// Shows what is alive.
fn show_live((): &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "balloons {}", LIVE_BALLOONS.load(Relaxed))?;
    writeln!(f, "hooks {}", LIVE_HOOKS.load(Relaxed))
}

/// Sleeps `ms` milliseconds, in 10 ms steps, until `stop()` holds.
fn sleep_unless(ms: &Atomic<u32>, stop: impl Fn() -> bool) {
    let mut left = ms.load(Relaxed);
    while left != 0 && !stop() {
        let step = left.min(10);
        fsleep(Delta::from_millis(step.into()));
        left -= step;
    }
}

/// Sleeps [`ACK_DELAY_MS`] unless `stop()` holds.
pub(crate) fn delay_ack(stop: impl Fn() -> bool) {
    sleep_unless(&ACK_DELAY_MS, stop);
}

/// Sleeps [`ACK_HOLD_MS`] unless `stop()` holds (the caller holds the balloon's lock).
pub(crate) fn hold_ack(stop: impl Fn() -> bool) {
    sleep_unless(&ACK_HOLD_MS, stop);
}

/// Whether this read of the memory statistics must fail; counts it down if so.
pub(crate) fn fail_stats() -> bool {
    count_down(&FAIL_STATS)
}

/// The debugfs files of the test switches; removing them (dropping) also turns them off.
pub(crate) struct TestSwitches {
    _ack_delay: Switch,
    _ack_hold: Switch,
    _fail_stats: Switch,
    _live: Pin<KBox<debugfs::File<()>>>,
    _dir: debugfs::Dir,
}

impl TestSwitches {
    /// Creates the files of `/sys/kernel/debug/virtio_balloon_rs_testing/`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<Self> {
        let dir = debugfs::Dir::new(c"virtio_balloon_rs_testing");
        Ok(Self {
            _ack_delay: switch(&dir, c"ack_delay_ms", &ACK_DELAY_MS)?,
            _ack_hold: switch(&dir, c"ack_hold_ms", &ACK_HOLD_MS)?,
            _fail_stats: switch(&dir, c"fail_stats", &FAIL_STATS)?,
            _live: KBox::pin_init(
                dir.read_callback_file(c"live", Ok::<_, Error>(()), &show_live),
                GFP_KERNEL,
            )?,
            _dir: dir,
        })
    }
}

impl Drop for TestSwitches {
    fn drop(&mut self) {
        for v in [&ACK_DELAY_MS, &ACK_HOLD_MS, &FAIL_STATS] {
            v.store(0, Relaxed);
        }
    }
}
