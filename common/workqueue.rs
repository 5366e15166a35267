// SPDX-License-Identifier: GPL-2.0

//! Workqueue glue that the kernel crate lacks in 7.2: a module's own workqueue, allocated
//! with flags (`alloc_workqueue()`) and destroyed when its owner drops, which callbacks
//! that cannot carry a reference to it reach through a [`QueueSlot`]; and `flush_work()`
//! on a work item.
//!
//! Holds `unsafe` for the calls to `alloc_workqueue()`, `destroy_workqueue()` and
//! `flush_work()`, the `&Queue` made from a published pointer, and [`OwnedQueue`]'s
//! `Send`/`Sync`.

use core::ptr::NonNull;
use kernel::{
    bindings,
    prelude::*,
    processor::cpu_relax,
    sync::atomic::{
        Acquire,
        Atomic,
        Full,
        Relaxed,
        Release, //
    },
    workqueue::{
        self,
        Queue,
        Work, //
    },
};

/// Where a module publishes the workqueue of its own, for callbacks that cannot carry a
/// reference to it (interrupt callbacks); a `static` of the module.
///
/// # Invariants
///
/// - `raw` is null, or the queue of the one [`OwnedQueue`] published here, which has not
///   started to destroy it.
/// - The [`OwnedQueue`] destroys its queue only after it cleared `raw` and then saw `users`
///   at zero, so a user that counted itself in `users` before it read `raw` may use the queue
///   until it counts itself out.
pub(crate) struct QueueSlot {
    /// The published queue, or null.
    raw: Atomic<*mut bindings::workqueue_struct>,
    /// Callers of [`QueueSlot::with`] in progress.
    users: Atomic<usize>,
}

impl QueueSlot {
    /// An empty slot.
    pub(crate) const fn new() -> Self {
        // INVARIANT: nothing published.
        Self {
            raw: Atomic::new(core::ptr::null_mut()),
            users: Atomic::new(0),
        }
    }

    /// Allocates a workqueue named `name` with `flags` (`WQ_*`, `max_active` the default)
    /// and publishes it here until the returned owner drops.
    ///
    /// # Errors
    ///
    /// `EBUSY` if the slot has a queue already, `ENOMEM`.
    pub(crate) fn publish(&'static self, name: &'static CStr, flags: u32) -> Result<OwnedQueue> {
        if !self.raw.load(Relaxed).is_null() {
            return Err(EBUSY);
        }
        // SAFETY:
        // - The format is `"%s"` and the one variadic argument a NUL-terminated string, which
        //   `name` is, for the whole call.
        // - `max_active` 0 asks for the default limit.
        let raw = unsafe {
            bindings::alloc_workqueue_noprof(c"%s".as_char_ptr(), flags, 0, name.as_char_ptr())
        };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        // INVARIANT: the owner made here is the only one with this queue, and it destroys
        // the queue only after clearing the slot (its `Drop`).
        let owner = OwnedQueue { raw, slot: self };
        self.raw
            .cmpxchg(core::ptr::null_mut(), raw.as_ptr(), Release)
            .map_err(|_| EBUSY)?;
        Ok(owner)
    }

    /// Runs `f` with the published queue, or with `system_highpri` when none is published.
    /// The owner's drop waits until `f` returned: keep `f` short (queueing work).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Queue) -> R) -> R {
        // Fully ordered: either the owner's drop sees this count, or this sees its cleared
        // pointer.
        self.users.fetch_add(1, Full);
        let raw = self.raw.load(Acquire);
        let r = if raw.is_null() {
            f(workqueue::system_highpri())
        } else {
            // SAFETY:
            // - `raw` is a live workqueue: it was published and, this caller being counted
            //   in `users` before it read `raw`, the owner destroys it only after the count
            //   drops below (type invariant).
            // - The reference does not outlive `f`, which returns before the count drops.
            f(unsafe { Queue::from_raw(raw) })
        };
        self.users.fetch_sub(1, Release);
        r
    }
}

/// A workqueue of the module's own, published in a [`QueueSlot`] and destroyed (after it
/// ran what was queued) when dropped.
///
/// # Invariants
///
/// `raw` was returned by `alloc_workqueue()`; it is destroyed only by `Drop`, after the
/// slot was cleared of it and no user of the slot holds it.
pub(crate) struct OwnedQueue {
    /// The queue.
    raw: NonNull<bindings::workqueue_struct>,
    /// Where it is published.
    slot: &'static QueueSlot,
}

// SAFETY: A workqueue may be used and destroyed from any thread.
unsafe impl Send for OwnedQueue {}
// SAFETY: Shared references give no access to the pointer.
unsafe impl Sync for OwnedQueue {}

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        // Fully ordered with `with()`: a user that did not count itself in before this sees
        // the cleared pointer.  A failed exchange means this owner was never published (the
        // slot had another queue): then nothing but this owner knows the queue.
        let _ = self
            .slot
            .raw
            .cmpxchg(self.raw.as_ptr(), core::ptr::null_mut(), Full);
        // TIMEOUT: none; a user holds the queue for one `enqueue()`.
        while self.slot.users.load(Acquire) != 0 {
            cpu_relax();
        }
        // SAFETY:
        // - `raw` came from `alloc_workqueue()` and is destroyed only here (type invariant).
        // - No user of the slot holds it any more and none can get it (cleared above, users
        //   drained), so nothing queues work on it during or after the destruction;
        //   `destroy_workqueue()` runs what was queued before it returns.
        unsafe { bindings::destroy_workqueue(self.raw.as_ptr()) };
    }
}

/// Waits until `work` is neither queued nor running (`flush_work()`); true if it waited.
pub(crate) fn flush_work<T: ?Sized, const ID: u64>(work: &Work<T, ID>) -> bool {
    // SAFETY:
    // - `raw_get` needs a pointer that is aligned and not dangling: it comes from a
    //   reference.
    // - `flush_work()` needs an initialized `work_struct`: a `Work` is reachable by
    //   reference only once it was pin-initialized (`Work::new` runs `INIT_WORK`), and it
    //   stays alive for the call.
    unsafe { bindings::flush_work(Work::raw_get(work)) }
}
