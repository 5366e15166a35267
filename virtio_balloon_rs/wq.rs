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
//! reaches the system ones), so this file wraps `alloc_workqueue()` and `destroy_workqueue()`
//! in one owning type, allocated once at module load.

use kernel::{
    bindings,
    prelude::*,
    sync::atomic::{
        Acquire,
        Atomic,
        Relaxed,
        Release, //
    },
    workqueue::{
        self,
        Queue, //
    },
};

/// The queue of the module, while it is loaded (null before [`ReclaimQueue::new`] and after
/// its drop).
static QUEUE: Atomic<*mut bindings::workqueue_struct> = Atomic::new(core::ptr::null_mut());

/// The module's reclaim-safe, high-priority workqueue.
///
/// # Invariants
///
/// - `raw` was returned by `alloc_workqueue()` and is destroyed only by `Drop`.
/// - [`QUEUE`] holds `raw` from `new` until `Drop`, which the module runs at exit, after its
///   driver was unregistered: every device was unbound, and unbinding flushes every work
///   item a balloon queued and stops its interrupt callbacks, so nothing reaches the queue
///   through [`QUEUE`] any more.
pub(crate) struct ReclaimQueue {
    raw: core::ptr::NonNull<bindings::workqueue_struct>,
}

// SAFETY: A workqueue may be used and destroyed from any thread.
unsafe impl Send for ReclaimQueue {}
// SAFETY: Shared references give no access to the pointer.
unsafe impl Sync for ReclaimQueue {}

impl ReclaimQueue {
    /// Allocates the queue, named `name`, with `WQ_PERCPU | WQ_MEM_RECLAIM | WQ_HIGHPRI`, and
    /// makes it the one [`with_queue`] hands out.
    ///
    /// # Errors
    ///
    /// `EBUSY` if the module has one already, `ENOMEM`.
    pub(crate) fn new(name: &'static CStr) -> Result<Self> {
        if !QUEUE.load(Relaxed).is_null() {
            return Err(EBUSY);
        }
        let flags = bindings::wq_flags_WQ_PERCPU
            | bindings::wq_flags_WQ_MEM_RECLAIM
            | bindings::wq_flags_WQ_HIGHPRI;
        // SAFETY: `"%s"` with one NUL-terminated string argument; `max_active` 0 is the
        // default limit.
        let raw = unsafe {
            bindings::alloc_workqueue_noprof(c"%s".as_char_ptr(), flags, 0, name.as_char_ptr())
        };
        let raw = core::ptr::NonNull::new(raw).ok_or(ENOMEM)?;
        // INVARIANT: allocated above; published for the module's lifetime.
        QUEUE.store(raw.as_ptr(), Release);
        Ok(Self { raw })
    }
}

impl Drop for ReclaimQueue {
    fn drop(&mut self) {
        QUEUE.store(core::ptr::null_mut(), Release);
        // SAFETY: Allocated by `new`, destroyed only here; no work item is queued or running
        // any more (type invariant), and none can be queued after `QUEUE` was cleared.
        unsafe { bindings::destroy_workqueue(self.raw.as_ptr()) };
    }
}

/// Runs `f` with the module's reclaim-safe queue (or `system_highpri` if the module has none,
/// which does not happen while a device is bound).
pub(crate) fn with_queue<R>(f: impl FnOnce(&Queue) -> R) -> R {
    let raw = QUEUE.load(Acquire);
    if raw.is_null() {
        return f(workqueue::system_highpri());
    }
    // SAFETY: `raw` stays valid while a device is bound, and every caller runs on behalf of a
    // bound device (type invariant of `ReclaimQueue`); the reference does not leave `f`.
    f(unsafe { Queue::from_raw(raw) })
}

/// What the module holds besides the driver.
pub(crate) struct BalloonModule {
    /// The queue the balloon's work runs on (it must progress under reclaim).
    _queue: ReclaimQueue,
    /// The test flavour's switches.
    #[cfg(virtio_rs_kunit)]
    _switches: crate::testing::TestSwitches,
}

impl crate::abi::virtio::ModuleGlobals for BalloonModule {
    fn new() -> Result<Self> {
        Ok(Self {
            _queue: ReclaimQueue::new(c"virtio_balloon_rs")?,
            #[cfg(virtio_rs_kunit)]
            _switches: crate::testing::TestSwitches::new()?,
        })
    }
}
