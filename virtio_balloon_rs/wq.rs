// SPDX-License-Identifier: GPL-2.0

//! The balloon's own workqueue, which makes progress under memory reclaim.
//!
//! Completions reach a waiting balloon through a work item (the interrupt callbacks cannot
//! take the state mutex).  On a system workqueue that work item may wait for a new kworker,
//! which the kernel may be unable to create exactly when the balloon is asked to give memory
//! back (shrinker, OOM notifier).  A queue allocated with `WQ_MEM_RECLAIM` has a rescuer
//! thread, created with the queue, that runs its work when no kworker can be had; with
//! `WQ_HIGHPRI` its workers run at high priority, and with `WQ_PERCPU` on the CPU that queued
//! the work, as on `system_highpri` (7.2 warns unless a queue says per-CPU or unbound).
//!
//! Kernel 7.2 has no Rust abstraction to allocate a workqueue (`kernel::workqueue` only
//! reaches the system ones); the shared contract's glue (`common/workqueue.rs`) allocates
//! it once at module load and publishes it in this module's [`QUEUE`].
//!
//! No `unsafe`.

use crate::abi::workqueue::{
    OwnedQueue,
    QueueSlot, //
};
use kernel::{bindings, prelude::*, workqueue::Queue};

/// Where the module's queue is published while the module is loaded.
static QUEUE: QueueSlot = QueueSlot::new();

/// Allocates the module's queue, named `name`, with `WQ_PERCPU | WQ_MEM_RECLAIM |
/// WQ_HIGHPRI`, and makes it the one [`with_queue`] hands out until it drops.
///
/// # Errors
///
/// `EBUSY` if the module has one already, `ENOMEM`.
fn reclaim_queue(name: &'static CStr) -> Result<OwnedQueue> {
    let flags = bindings::wq_flags_WQ_PERCPU
        | bindings::wq_flags_WQ_MEM_RECLAIM
        | bindings::wq_flags_WQ_HIGHPRI;
    QUEUE.publish(name, flags)
}

/// Runs `f` with the module's reclaim-safe queue (or `system_highpri` if the module has none,
/// which does not happen while a device is bound).
pub(crate) fn with_queue<R>(f: impl FnOnce(&Queue) -> R) -> R {
    QUEUE.with(f)
}

/// What the module holds besides the driver.
pub(crate) struct BalloonModule {
    /// The queue the balloon's work runs on (it must progress under reclaim).
    _queue: OwnedQueue,
    /// The test flavour's switches.
    #[cfg(virtio_rs_kunit)]
    _switches: crate::testing::TestSwitches,
}

impl crate::abi::virtio::ModuleGlobals for BalloonModule {
    fn new() -> Result<Self> {
        Ok(Self {
            _queue: reclaim_queue(c"virtio_balloon_rs")?,
            #[cfg(virtio_rs_kunit)]
            _switches: crate::testing::TestSwitches::new()?,
        })
    }
}
