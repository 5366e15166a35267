// SPDX-License-Identifier: GPL-2.0

//! Balloon page migration: the balloon's page list as the kernel's balloon core keeps it
//! (`struct balloon_dev_info`, `include/linux/balloon.h`, `mm/balloon.c`).  Part of the
//! crate's memory-management glue (a submodule of `mm.rs`).
//!
//! Pages the device holds sit on the list of a [`BalloonList`], where compaction can find
//! them: the core isolates a page from the list, asks the driver to move the balloon from it
//! to a new page ([`Migrate::migrate`]), and on success puts the new page on the list and
//! frees the old one; on failure it puts the old page back.  The core protects the list with
//! its own lock (`balloon_pages_lock`), so the driver adds and takes pages only through the
//! core's functions.  With `adjust_managed_page_count` set the core also moves pages in and
//! out of the managed page counts (and across zones when a page migrates).
//!
//! None of this is in the generated bindings (`linux/balloon.h` is not included), so the
//! structure and the exported functions are declared here, exactly as in 7.2; the header's
//! one inline helper (`balloon_devinfo_init()`) and the list operations it needs
//! (`INIT_LIST_HEAD()`, `list_add_tail()`) are written out below.  All the `unsafe` of the
//! page list is in this file, with the two places where the balloon's shared state meets it:
//! its `HasBalloonList` contract and [`ListRef`], the engine's pointer to the list.

use crate::{
    mm::BalloonPage,
    shared::BalloonShared, //
};
use core::{marker::PhantomData, ptr::NonNull};
use kernel::{
    bindings,
    ffi::c_int,
    prelude::*,
    types::Opaque, //
};

/// `struct balloon_dev_info` (`include/linux/balloon.h`, 7.2).
#[repr(C)]
struct RawDevInfo {
    /// Pages isolated for migration (under the core's lock).
    isolated_pages: kernel::ffi::c_ulong,
    /// The pages the device holds, linked through `page->lru` (under the core's lock).
    pages: bindings::list_head,
    /// Moves the balloon from the page in the third argument to the one in the second.
    migratepage: Option<
        unsafe extern "C" fn(
            *mut RawDevInfo,
            *mut bindings::page,
            *mut bindings::page,
            bindings::migrate_mode,
        ) -> c_int,
    >,
    /// Whether the core adjusts the managed page counts.
    adjust_managed_page_count: bool,
}

// Exported by `mm/balloon.c` (`EXPORT_SYMBOL_GPL`), declared in `linux/balloon.h`.
#[allow(improper_ctypes)]
extern "C" {
    fn balloon_page_enqueue(b_dev_info: *mut RawDevInfo, page: *mut bindings::page);
    fn balloon_page_list_enqueue(
        b_dev_info: *mut RawDevInfo,
        pages: *mut bindings::list_head,
    ) -> usize;
    fn balloon_page_list_dequeue(
        b_dev_info: *mut RawDevInfo,
        pages: *mut bindings::list_head,
        n_req_pages: usize,
    ) -> usize;
}

/// `INIT_LIST_HEAD()`: an empty list.
///
/// # Safety
///
/// `head` is valid for writes.
unsafe fn init_list_head(head: *mut bindings::list_head) {
    // SAFETY: The caller's guarantee.
    unsafe {
        (*head).next = head;
        (*head).prev = head;
    }
}

/// `list_add_tail()`: links `entry` before `head`.
///
/// # Safety
///
/// - `head` is a valid list that nothing else uses concurrently.
/// - `entry` is valid for writes and on no list.
unsafe fn list_add_tail(entry: *mut bindings::list_head, head: *mut bindings::list_head) {
    // SAFETY: The caller's guarantees: every pointer here is a valid entry of `head`'s
    // list, which only this thread touches.
    unsafe {
        let prev = (*head).prev;
        (*entry).next = head;
        (*entry).prev = prev;
        (*prev).next = entry;
        (*head).prev = entry;
    }
}

/// The `lru` field of `page`, which links a page on the balloon's lists.
///
/// # Safety
///
/// `page` points to a valid `struct page`.
unsafe fn lru(page: *mut bindings::page) -> *mut bindings::list_head {
    // SAFETY: The caller's guarantee; a place projection, nothing is read.
    unsafe {
        &raw mut (*page)
            .__bindgen_anon_1
            .__bindgen_anon_1
            .__bindgen_anon_1
            .lru
    }
}

/// Pages per call of the core's list functions, which hold its lock with interrupts off for
/// the whole list: at most what one C driver message moves (256), so that a 4096-page message
/// does not keep interrupts off sixteen times as long.
const LIST_CHUNK: usize = 256;

/// What moves the balloon from one page to another for the balloon core.
pub(crate) trait Migrate: Sync {
    /// Tells the device that `new` is in the balloon instead of `old`; on success the core
    /// puts `new` on the list and frees `old`, on failure it puts `old` back.
    ///
    /// # Errors
    ///
    /// Any error: the balloon did not move (`EAGAIN` makes the core try again soon).
    fn migrate(&self, new: PageRef<'_>, old: PageRef<'_>) -> Result;
}

/// A type that embeds a [`BalloonList`] whose migration callback it answers.
///
/// # Safety
///
/// - `OFFSET` is the offset in `Self` of a field of type [`BalloonList`], and every
///   [`BalloonList::new::<Self>`] initializes that field of a `Self`.
/// - The `Self` stays alive (and pinned) while any page it enqueued is on the list or
///   isolated from it: it dequeues every page before it goes away.
pub(crate) unsafe trait HasBalloonList: Migrate {
    /// Offset of the [`BalloonList`] in `Self`.
    const OFFSET: usize;
}

/// The balloon's page list, `struct balloon_dev_info`.
///
/// # Invariants
///
/// `info` was initialized by [`BalloonList::new`] and stays pinned: the core's list of it
/// points to itself.  Pages on the list hold the balloon's reference to them.  `info` is the
/// first field (the migration callback finds the list from it).
#[repr(C)]
#[pin_data]
pub(crate) struct BalloonList {
    #[pin]
    info: Opaque<RawDevInfo>,
    /// The driver moves pages out of and into the managed page counts itself, once per zone
    /// and batch (`mm::adjust_managed`), instead of the core's once per page; then the
    /// core's `adjust_managed_page_count` is off.
    account: bool,
}

// SAFETY: The core's lock protects the list; the other fields are written once at init.
unsafe impl Send for BalloonList {}
// SAFETY: See `Send`: every access goes through the core's functions, which lock.
unsafe impl Sync for BalloonList {}

impl BalloonList {
    /// An empty list whose migration callback is `T`'s; with `adjust_managed`, pages leave
    /// the managed page counts while in the balloon (unless the device deflates on OOM, as
    /// C): counted by the driver once per batch with `batch`, else by the core page by page.
    pub(crate) fn new<T: HasBalloonList>(adjust_managed: bool, batch: bool) -> impl PinInit<Self> {
        let info = Opaque::ffi_init(move |info: *mut RawDevInfo| {
            // SAFETY: `info` is valid for writes (pinned memory being initialized); this is
            // `balloon_devinfo_init()` and the two fields the driver sets.
            unsafe {
                (*info).isolated_pages = 0;
                init_list_head(&raw mut (*info).pages);
                (*info).migratepage = Some(migratepage::<T>);
                (*info).adjust_managed_page_count = adjust_managed && !batch;
            }
        });
        // INVARIANT: initialized by `info`, pinned in place.
        pin_init!(Self {
            info <- info,
            account: adjust_managed && batch,
        })
    }

    /// Puts every page of `pages` on the list ([`LIST_CHUNK`] pages per call of the core),
    /// emptying it: the balloon holds them from now on.
    pub(crate) fn enqueue(&self, pages: &mut KVec<BalloonPage>) {
        for chunk in pages.chunks(LIST_CHUNK) {
            let mut head = bindings::list_head {
                next: core::ptr::null_mut(),
                prev: core::ptr::null_mut(),
            };
            let head = &raw mut head;
            // SAFETY: `head` is a local that stays in place until the end of this iteration.
            unsafe { init_list_head(head) };
            for page in chunk {
                // SAFETY:
                // - `head` is a valid list that only this thread uses.
                // - The page is valid and ours (type invariant of `BalloonPage`); a page the
                //   driver owns and has not enqueued is on no list.
                unsafe { list_add_tail(lru(page.as_ptr()), head) };
            }
            // SAFETY:
            // - `info` is an initialized `balloon_dev_info` (type invariant).
            // - `head` lists order-0 pages the driver allocated and owns.
            unsafe { balloon_page_list_enqueue(self.info.get(), head) };
        }
        if self.account {
            crate::mm::adjust_managed(pages, -1);
        }
        // The list holds their references now.
        for page in pages.drain_all() {
            core::mem::forget(page);
        }
    }

    /// Puts `page` on the list: the balloon holds it from now on.
    pub(crate) fn enqueue_one(&self, page: BalloonPage) {
        // SAFETY:
        // - `info` is an initialized `balloon_dev_info` (type invariant).
        // - The page is valid, ours and on no list (type invariant of `BalloonPage`).
        unsafe { balloon_page_enqueue(self.info.get(), page.as_ptr()) };
        if self.account {
            crate::mm::adjust_managed(core::slice::from_ref(&page), -1);
        }
        // The list holds its reference now.
        core::mem::forget(page);
    }

    /// Takes up to `n` pages off the list into `out` (within its spare capacity), at most
    /// [`LIST_CHUNK`] per call of the core; returns how many.  Fewer than asked while
    /// compaction has pages isolated.
    pub(crate) fn dequeue(&self, out: &mut KVec<BalloonPage>, n: usize) -> usize {
        let start = out.len();
        let mut taken = 0;
        while taken < n {
            let got = self.dequeue_chunk(out, (n - taken).min(LIST_CHUNK));
            if got == 0 {
                break;
            }
            taken += got;
        }
        if self.account {
            crate::mm::adjust_managed(out.get(start..).unwrap_or(&[]), 1);
        }
        taken
    }

    /// One call of [`Self::dequeue`]'s: up to `n` pages.
    fn dequeue_chunk(&self, out: &mut KVec<BalloonPage>, n: usize) -> usize {
        let n = n.min(out.capacity() - out.len());
        if n == 0 {
            return 0;
        }
        let mut head = bindings::list_head {
            next: core::ptr::null_mut(),
            prev: core::ptr::null_mut(),
        };
        let head = &raw mut head;
        // SAFETY: `head` is a local that stays in place until the end of this function.
        unsafe { init_list_head(head) };
        // SAFETY:
        // - `info` is an initialized `balloon_dev_info` (type invariant).
        // - `head` is an empty list that outlives the call.
        let got = unsafe { balloon_page_list_dequeue(self.info.get(), head, n) };
        let mut taken = 0;
        // SAFETY: `head` is valid; the core linked the pages it took into it.
        let mut pos = unsafe { (*head).next };
        while pos != head && taken < got {
            // SAFETY: `pos` is the `lru` of a page on the local list, which only this thread
            // uses now.
            let next = unsafe { (*pos).next };
            // SAFETY: Every entry of the list is the `lru` field of a `struct page`.
            let page = unsafe {
                kernel::container_of!(
                    pos,
                    bindings::page,
                    __bindgen_anon_1.__bindgen_anon_1.__bindgen_anon_1.lru
                )
            };
            if let Some(page) = NonNull::new(page) {
                // SAFETY: The page left the balloon's list with the balloon's reference to
                // it, which is ours now; it came from `enqueue` or the core's migration
                // (an order-0 page either way).
                let page = unsafe { BalloonPage::from_raw(page) };
                // Cannot fail: at most `n` pages, within the spare capacity.
                let _ = out.push_within_capacity(page);
                taken += 1;
            }
            pos = next;
        }
        taken
    }

    /// Pages compaction has isolated from the list right now (a racy read).
    pub(crate) fn isolated(&self) -> usize {
        // SAFETY: `info` is initialized (type invariant); a racy read of a word the core
        // writes under its lock, like `READ_ONCE()`.
        // (`c_ulong` is `usize` in the kernel's Rust.)
        unsafe { (&raw const (*self.info.get()).isolated_pages).read_volatile() }
    }
}

/// A page the balloon core lends to [`Migrate::migrate`] for the duration of the call.
///
/// # Invariants
///
/// `page` is a valid order-0 page on which the core holds a reference for `'a`.
pub(crate) struct PageRef<'a> {
    page: NonNull<bindings::page>,
    _lent: PhantomData<&'a bindings::page>,
}

impl PageRef<'_> {
    /// The device's (4 KiB) frame numbers of the page.
    pub(crate) fn pfns(&self) -> impl Iterator<Item = u64> {
        crate::mm::balloon_pfns_of(self.page.as_ptr())
    }

    /// Takes a reference of the driver's own to the page (`get_page()`).
    pub(crate) fn get(&self) -> BalloonPage {
        // `get_page()` of an order-0 page is `page_ref_inc()`: an increment of `_refcount`,
        // plus a tracepoint that exists only with CONFIG_DEBUG_PAGE_REF.
        // SAFETY: The page is valid and referenced by the core (type invariant), so its
        // count is not zero and it is not a tail page; the count is an `atomic_t`.
        unsafe { bindings::atomic_inc(&raw mut (*self.page.as_ptr())._refcount) };
        // SAFETY: The reference just taken is ours; the page is order-0 (type invariant).
        unsafe { BalloonPage::from_raw(self.page) }
    }
}

#[cfg(CONFIG_DEBUG_PAGE_REF)]
compile_error!("PageRef::get() does not emit the DEBUG_PAGE_REF tracepoint");

/// The `migratepage` callback of a [`BalloonList`] embedded in a `T`.
///
/// # Safety
///
/// Called by the balloon core with `info` the list of a live `T` (see [`HasBalloonList`]),
/// `page` a page it isolated from that list and `newpage` a free order-0 page, both
/// referenced by the core for the call.
unsafe extern "C" fn migratepage<T: HasBalloonList>(
    info: *mut RawDevInfo,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> c_int {
    // SAFETY: `info` is the `info` field of a `BalloonList` (its first field, `repr(C)`),
    // which is the field at `T::OFFSET` of a `T` that lives while one of its pages is
    // isolated (the caller's guarantee and the contract of `HasBalloonList`).
    let owner = unsafe { &*info.cast::<u8>().sub(T::OFFSET).cast::<T>() };
    // SAFETY: As above: the list that holds `info`, alive for the call.
    let account = unsafe { (*info.cast::<BalloonList>()).account };
    let (Some(new), Some(old)) = (NonNull::new(newpage), NonNull::new(page)) else {
        return EINVAL.to_errno();
    };
    let (new_page, old_page) = (new, old);
    // INVARIANT: the core holds both pages for the call.
    let new = PageRef {
        page: new,
        _lent: PhantomData,
    };
    let old = PageRef {
        page: old,
        _lent: PhantomData,
    };
    match owner.migrate(new, old) {
        Ok(()) => {
            // What the core does with its own accounting on: a page that moves to another
            // zone moves that zone's managed count with it.
            // SAFETY: The core lends both pages for the call (the caller's guarantee).
            if account && !unsafe { crate::mm::same_zone(new_page, old_page) } {
                // SAFETY: As above.
                unsafe {
                    crate::mm::adjust_managed_one(old_page, 1);
                    crate::mm::adjust_managed_one(new_page, -1);
                }
            }
            0
        }
        // `ENOENT` would tell the core that the old page left the balloon but the new one did
        // not join it: never the case here.
        Err(e) if e == ENOENT => EAGAIN.to_errno(),
        Err(e) => e.to_errno(),
    }
}

/// The balloon's page list (the `list` of [`BalloonShared`]), as the engine's host reaches
/// it.
///
/// # Invariants
///
/// Points to the `list` of the [`BalloonShared`] whose engine holds this value, which is
/// pinned and outlives its engine.
pub(crate) struct ListRef(core::ptr::NonNull<BalloonList>);

// SAFETY: `BalloonList` is `Sync`; the pointer is only dereferenced under the invariant.
unsafe impl Send for ListRef {}
// SAFETY: See `Send`.
unsafe impl Sync for ListRef {}

impl ListRef {
    /// The list of `shared`, for its engine.
    pub(crate) fn new(shared: &BalloonShared) -> Self {
        // INVARIANT: `shared` is pinned in its `Arc`; the engine is a field of it.
        Self(core::ptr::NonNull::from(&shared.list))
    }

    /// The list.
    pub(crate) fn get(&self) -> &BalloonList {
        // SAFETY: Valid as long as the engine that holds this value (type invariant).
        unsafe { self.0.as_ref() }
    }
}

// SAFETY:
// - `OFFSET` is the offset of `list`, a `BalloonList` field that `probe` initializes with
//   `BalloonList::new::<BalloonShared>`.
// - The shared state is pinned in an `Arc` that the driver data holds until after `remove`,
//   which takes every page off the list and waits for isolated ones
//   (`BalloonShared::release_everything`).
unsafe impl HasBalloonList for BalloonShared {
    const OFFSET: usize = core::mem::offset_of!(BalloonShared, list);
}
