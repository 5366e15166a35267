// SPDX-License-Identifier: GPL-2.0

//! A balloon's shared state: what the driver, its work items and its callbacks share.
//!
//! No `unsafe` (its `HasBalloonList` contract is kept in `mm/migrate.rs`).

use crate::{
    abi::{
        self,
        virtio::DeviceRef, //
    },
    device::DeviceHost,
    engine::Engine,
    hinting::HintPool,
    migrate::BalloonList,
    pressure::{
        OomNotifier,
        Shrinker, //
    },
    reporting::PageReporting,
    stats::Counters,
};
use kernel::{
    device,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::Atomic,
        Arc,
        CondVar,
        Mutex, //
    },
    workqueue::{
        impl_has_work,
        Work, //
    },
};

/// State of one balloon, behind [`BalloonShared::state`].
pub(crate) struct State {
    /// The balloon's count, the messages in flight and the queues (the pages themselves are
    /// on [`BalloonShared::list`]).  Nothing allocates with reclaim under this lock, because
    /// the shrinker and the OOM notifier take it from reclaim.
    pub(crate) engine: Engine<DeviceHost>,
    /// The statistics buffer, in memory the device reads at its guest-physical address.
    pub(crate) stats_buf: abi::LegacyBuf<u8>,
    /// An interrupt said the device used a buffer since the last look.
    pub(crate) ack_pending: bool,
    /// The device broke the inflate queue (seen and logged): the balloon grows no more.
    pub(crate) inflate_lost: bool,
    /// The device broke the deflate queue (seen and logged): pages leave the balloon without
    /// telling it (or not at all, with VIRTIO_BALLOON_F_MUST_TELL_HOST: then `dead` is set).
    pub(crate) deflate_lost: bool,
    /// Waits for the device in a row that ended in a timeout, with nothing handed back since.
    pub(crate) silent_waits: u32,
    /// Times the device handed something back (wrapping), whoever looked.
    pub(crate) answers: u32,
    /// A timeout was logged already (once per device).
    pub(crate) slow_logged: bool,
    /// A report failed on the device's side (broken queue, or no answer in
    /// [`REPORT_TIMEOUT_MS`](crate::callbacks::REPORT_TIMEOUT_MS); logged): every later report
    /// fails at once.  A report the device did not return keeps its descriptors until
    /// teardown.
    pub(crate) report_lost: bool,
}

/// A balloon, shared by the driver, its work items and its interrupt callbacks.
#[pin_data]
pub(crate) struct BalloonShared {
    #[pin]
    pub(crate) state: Mutex<State>,
    #[pin]
    pub(crate) acked: CondVar,
    #[pin]
    pub(crate) update: Work<BalloonShared, 0>,
    #[pin]
    pub(crate) ack: Work<BalloonShared, 1>,
    #[pin]
    pub(crate) stats: Work<BalloonShared, 2>,
    /// Serves the device's free page hinting commands (`hinting.rs`).
    #[pin]
    pub(crate) hint_work: Work<BalloonShared, 3>,
    /// Free page hinting, with VIRTIO_BALLOON_F_FREE_PAGE_HINT.
    pub(crate) hint: Option<Arc<HintPool>>,
    /// Request slot of the free page queue, or [`NO_SLOT`](crate::config::NO_SLOT).
    pub(crate) hint_slot: usize,
    /// The OOM notifier and the shrinker, when the policy asks for them.
    #[pin]
    pub(crate) hooks: Mutex<Option<PressureHooks>>,
    /// The page reporting registration, with VIRTIO_BALLOON_F_REPORTING (taken, and so
    /// unregistered, first at teardown).
    #[pin]
    pub(crate) reporting: Mutex<Option<PageReporting<BalloonShared>>>,
    /// Request slot of the reporting queue, or [`NO_SLOT`](crate::config::NO_SLOT).
    pub(crate) report_slot: usize,
    /// Set at teardown: no more work gets queued.
    pub(crate) stop: Atomic<bool>,
    /// Memory pressure took pages back: do not inflate again until the target changes.
    pub(crate) pressure_hold: Atomic<bool>,
    /// Current back-off after failed allocations, in ms (0: none).
    pub(crate) backoff_ms: Atomic<u32>,
    /// The device stopped taking messages, or broke a queue in a way that leaves the balloon
    /// no safe move: the balloon stays as it is (logged once) until the driver is unbound,
    /// which then releases what the device holds without waiting.
    pub(crate) dead: Atomic<bool>,
    /// Guest pages the OOM notifier gives back per call (`oom_pages`).
    pub(crate) oom_pages: u64,
    /// What the driver did, for debugfs.
    pub(crate) counters: Arc<Counters>,
    /// The negotiated features.
    pub(crate) features: u64,
    /// The device: configuration and reset for the work items (dropped with the shared
    /// state, which the driver data holds until the end of `remove`).
    pub(crate) vdev: DeviceRef,
    /// The pages the device holds, on the balloon core's list.
    #[pin]
    pub(crate) list: BalloonList,
    /// The auxiliary device, for logging.
    pub(crate) dev: ARef<device::Device>,
}

impl_has_work! {
    impl HasWork<Self, 0> for BalloonShared { self.update }
    impl HasWork<Self, 1> for BalloonShared { self.ack }
    impl HasWork<Self, 2> for BalloonShared { self.stats }
    impl HasWork<Self, 3> for BalloonShared { self.hint_work }
}

/// The pressure hooks of a balloon; dropping them unregisters them.
pub(crate) struct PressureHooks {
    pub(crate) _oom: Option<OomNotifier<BalloonShared>>,
    pub(crate) _shrinker: Option<Shrinker<BalloonShared>>,
    /// Gives hinted blocks back to reclaim (with FREE_PAGE_HINT, whatever the policy).
    pub(crate) _hint: Option<Shrinker<HintPool>>,
}

/// The locked balloon state.
pub(crate) type StateGuard<'a> =
    kernel::sync::lock::Guard<'a, State, kernel::sync::lock::mutex::MutexBackend>;
