// SPDX-License-Identifier: GPL-2.0

//! Deflating under memory pressure: an OOM notifier and a shrinker.
//!
//! Neither has a Rust abstraction in 7.2, so this module wraps the C interfaces
//! (`register_oom_notifier()`, `shrinker_alloc()`/`shrinker_register()`/`shrinker_free()`)
//! in two small RAII types; all their `unsafe` is here.  `register_oom_notifier()` is
//! exported but its header (`linux/oom.h`) is not in the bindings, so it is declared below,
//! exactly as in `mm/oom_kill.c`.

use core::ptr::NonNull;
use kernel::{
    bindings,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
    sync::Arc,
    types::Opaque, //
};

/// Priority of the OOM notifier (`VIRTIO_BALLOON_OOM_NOTIFY_PRIORITY` in C).
const OOM_NOTIFY_PRIORITY: c_int = 80;

#[allow(improper_ctypes)]
extern "C" {
    fn register_oom_notifier(nb: *mut bindings::notifier_block) -> c_int;
    fn unregister_oom_notifier(nb: *mut bindings::notifier_block) -> c_int;
}

/// Why memory is being given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pressure {
    /// The OOM killer is about to run.
    Oom,
    /// Reclaim asked the shrinker.
    Shrinker,
}

/// Something that can give guest memory back under pressure.
pub(crate) trait Deflate: Send + Sync + 'static {
    /// Guest pages that could be given back now.
    fn reclaimable(&self) -> u64;
    /// Gives back up to `pages` guest pages without waiting for a busy balloon; returns how
    /// many it gave back.
    fn deflate(&self, pages: u64, why: Pressure) -> u64;
}

/// The notifier block and what its callback needs; `nb` first so that the callback finds
/// the rest from the block's address.
#[repr(C)]
struct OomBlock<T: Deflate> {
    nb: Opaque<bindings::notifier_block>,
    target: Arc<T>,
    pages: u64,
}

/// A registered OOM notifier that deflates `pages` guest pages each time the OOM killer is
/// about to run.
///
/// # Invariants
///
/// `block.nb` is registered with `register_oom_notifier()` until `Drop`.
pub(crate) struct OomNotifier<T: Deflate> {
    block: Pin<KBox<OomBlock<T>>>,
}

// SAFETY: The block is only touched by the notifier chain (under its rwsem) and by `Drop`;
// `T` is `Send + Sync`.
unsafe impl<T: Deflate> Send for OomNotifier<T> {}
// SAFETY: Shared references give no access to the block.
unsafe impl<T: Deflate> Sync for OomNotifier<T> {}

impl<T: Deflate> OomNotifier<T> {
    /// Registers the notifier.
    ///
    /// # Errors
    ///
    /// `ENOMEM`, or the error of `register_oom_notifier()`.
    pub(crate) fn new(target: Arc<T>, pages: u64) -> Result<Self> {
        let block = KBox::pin(
            OomBlock {
                nb: Opaque::new(bindings::notifier_block {
                    notifier_call: Some(oom_notify::<T>),
                    next: core::ptr::null_mut(),
                    priority: OOM_NOTIFY_PRIORITY,
                }),
                target,
                pages,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: The block is pinned and lives until `Drop` unregisters it.
        kernel::error::to_result(unsafe { register_oom_notifier(block.nb.get()) })?;
        #[cfg(virtio_rs_kunit)]
        crate::testing::live(&crate::testing::LIVE_HOOKS, true);
        // INVARIANT: registered just above.
        Ok(Self { block })
    }
}

impl<T: Deflate> Drop for OomNotifier<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by `new` (type invariant); unregistering waits for running
        // callbacks (the chain is protected by a blocking notifier rwsem).
        unsafe { unregister_oom_notifier(self.block.nb.get()) };
        #[cfg(virtio_rs_kunit)]
        crate::testing::live(&crate::testing::LIVE_HOOKS, false);
    }
}

/// The OOM notifier callback (`virtio_balloon_oom_notify()` in C).
///
/// # Safety
///
/// `nb` is the block of a live [`OomBlock<T>`]; `parm` points to the `unsigned long` count of
/// freed pages.
unsafe extern "C" fn oom_notify<T: Deflate>(
    nb: *mut bindings::notifier_block,
    _action: c_ulong,
    parm: *mut c_void,
) -> c_int {
    // SAFETY: `nb` is the first field of a `#[repr(C)]` `OomBlock<T>` (`Opaque` is
    // transparent), alive while registered.
    let block = unsafe { &*nb.cast::<OomBlock<T>>() };
    let freed = block.target.deflate(block.pages, Pressure::Oom);
    if !parm.is_null() {
        let parm = parm.cast::<c_ulong>();
        // SAFETY: The OOM killer passes its freed-pages counter.
        unsafe { *parm = (*parm).saturating_add(freed.try_into().unwrap_or(c_ulong::MAX)) };
    }
    // CAST: `NOTIFY_OK` is 1.
    bindings::NOTIFY_OK as c_int
}

/// A registered shrinker that deflates when reclaim asks.
///
/// # Invariants
///
/// `raw` was allocated by `shrinker_alloc()` and registered; its `private_data` is
/// `Arc::as_ptr(&target)`; it is freed (and unregistered) only by `Drop`.
pub(crate) struct Shrinker<T: Deflate> {
    raw: NonNull<bindings::shrinker>,
    /// Keeps `private_data` alive while the shrinker is registered.
    _target: Arc<T>,
}

// SAFETY: The shrinker may be freed from any thread; `T` is `Send + Sync`.
unsafe impl<T: Deflate> Send for Shrinker<T> {}
// SAFETY: Shared references do nothing with the raw pointer.
unsafe impl<T: Deflate> Sync for Shrinker<T> {}

impl<T: Deflate> Shrinker<T> {
    /// Allocates and registers a shrinker named `name`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new(target: Arc<T>, name: &CStr) -> Result<Self> {
        // SAFETY: `"%s"` with one string argument, both NUL-terminated.
        let raw = unsafe { bindings::shrinker_alloc(0, c"%s".as_char_ptr(), name.as_char_ptr()) };
        let raw = NonNull::new(raw).ok_or(ENOMEM)?;
        // SAFETY: `raw` is a freshly allocated shrinker that nothing else uses yet.
        unsafe {
            let s = raw.as_ptr();
            (*s).count_objects = Some(shrink_count::<T>);
            (*s).scan_objects = Some(shrink_scan::<T>);
            // CAST: `DEFAULT_SEEKS` is 2.
            (*s).seeks = bindings::DEFAULT_SEEKS as c_int;
            (*s).private_data = Arc::as_ptr(&target).cast_mut().cast();
            bindings::shrinker_register(s);
        }
        #[cfg(virtio_rs_kunit)]
        crate::testing::live(&crate::testing::LIVE_HOOKS, true);
        // INVARIANT: allocated and registered, `private_data` set to the target.
        Ok(Self {
            raw,
            _target: target,
        })
    }
}

impl<T: Deflate> Drop for Shrinker<T> {
    fn drop(&mut self) {
        // SAFETY: Allocated and registered by `new` (type invariant); `shrinker_free()`
        // unregisters it and waits for running callbacks before freeing it.
        unsafe { bindings::shrinker_free(self.raw.as_ptr()) };
        #[cfg(virtio_rs_kunit)]
        crate::testing::live(&crate::testing::LIVE_HOOKS, false);
    }
}

/// Returns the target behind a shrinker.
///
/// # Safety
///
/// `s` must be a shrinker made by [`Shrinker::new`] for a `T`, still registered.
unsafe fn shrinker_target<'a, T: Deflate>(s: *mut bindings::shrinker) -> &'a T {
    // SAFETY: `private_data` is `Arc::as_ptr()` of the target, which the `Shrinker` keeps
    // alive while registered.
    unsafe { &*(*s).private_data.cast::<T>() }
}

/// `count_objects`: guest pages the balloon could give back.
///
/// # Safety
///
/// Called by the shrinker core for a shrinker made by [`Shrinker::new`].
unsafe extern "C" fn shrink_count<T: Deflate>(
    s: *mut bindings::shrinker,
    _sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: The caller's guarantee.
    let n = unsafe { shrinker_target::<T>(s) }.reclaimable();
    if n == 0 {
        // CAST: the C API encodes "nothing to free" as a negative `long` in an unsigned one.
        bindings::SHRINK_EMPTY as c_ulong
    } else {
        n.try_into().unwrap_or(c_ulong::MAX)
    }
}

/// `scan_objects`: gives back up to `nr_to_scan` guest pages.
///
/// # Safety
///
/// Called by the shrinker core for a shrinker made by [`Shrinker::new`], with a valid
/// `shrink_control`.
unsafe extern "C" fn shrink_scan<T: Deflate>(
    s: *mut bindings::shrinker,
    sc: *mut bindings::shrink_control,
) -> c_ulong {
    // SAFETY: The caller passes a valid control block.
    let want = unsafe { (*sc).nr_to_scan };
    // SAFETY: The caller's guarantee.
    // CAST: `c_ulong` is 64 bits here.
    let freed = unsafe { shrinker_target::<T>(s) }.deflate(want as u64, Pressure::Shrinker);
    if freed == 0 {
        // CAST: as in `shrink_count`.
        bindings::SHRINK_STOP as c_ulong
    } else {
        freed.try_into().unwrap_or(c_ulong::MAX)
    }
}
