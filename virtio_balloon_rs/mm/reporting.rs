// SPDX-License-Identifier: GPL-2.0

//! Free page reporting: the kernel's page reporting core (`mm/page_reporting.c`) hands a
//! registered device lists of free pages (each a block of at least `page_reporting_order`)
//! so that the host can take the memory back; the pages return to the free lists after the
//! callback.  Part of the crate's memory-management glue (a submodule of `mm.rs`).
//!
//! The kernel crate has no abstraction for it and `include/linux/page_reporting.h` is not in
//! the bindings, so this module declares the structure and the two exported functions
//! (`page_reporting_register()` and `page_reporting_unregister()`, `EXPORT_SYMBOL_GPL`)
//! exactly as that header does, and wraps them in one RAII type, [`PageReporting`]; all of
//! its `unsafe` is here.  Only one device in the system may report at a time: registering a
//! second one fails with `EBUSY`.

use crate::abi::Sg;
use crate::mm::pfn_of as page_to_pfn;
use kernel::{
    bindings,
    ffi::{
        c_int,
        c_uint, //
    },
    page::PAGE_SHIFT,
    prelude::*,
    sync::Arc,
    types::Opaque, //
};

/// Most free page blocks in one report (`PAGE_REPORTING_CAPACITY`).
pub(crate) const CAPACITY: usize = 32;

/// `PAGE_REPORTING_ORDER_UNSPECIFIED` (-1 in an `unsigned int`): the core picks the order
/// (`pageblock_order`, 2 MiB on x86-64), unless the `page_reporting.page_reporting_order`
/// parameter says otherwise.
const ORDER_UNSPECIFIED: c_uint = c_uint::MAX;

/// The report callback, as `struct page_reporting_dev_info` declares it.
type ReportFn =
    unsafe extern "C" fn(*mut PageReportingDevInfo, *mut bindings::scatterlist, c_uint) -> c_int;

/// `struct page_reporting_dev_info` (`include/linux/page_reporting.h`, Linux 7.2): field for
/// field, with the kernel's own `delayed_work` and `atomic_t` from the bindings.
#[repr(C)]
struct PageReportingDevInfo {
    /// Reports the free pages of a scatterlist; 0 or a negative errno.
    report: Option<ReportFn>,
    /// The core's work item (initialized by `page_reporting_register()`).
    work: bindings::delayed_work,
    /// The core's state (idle, requested, active).
    state: bindings::atomic_t,
    /// Smallest order of the blocks to report.
    order: c_uint,
    /// Most blocks per report; 0 means [`CAPACITY`].
    capacity: c_uint,
}

// The layout `mm/page_reporting.c` was compiled with: the callback, then the work item, then
// three 32-bit fields.
const _: () = {
    use core::mem::{
        align_of,
        offset_of,
        size_of, //
    };
    assert!(offset_of!(PageReportingDevInfo, report) == 0);
    assert!(offset_of!(PageReportingDevInfo, work) == size_of::<usize>());
    assert!(
        offset_of!(PageReportingDevInfo, state)
            == size_of::<usize>() + size_of::<bindings::delayed_work>()
    );
    assert!(offset_of!(PageReportingDevInfo, order) == offset_of!(PageReportingDevInfo, state) + 4);
    assert!(
        offset_of!(PageReportingDevInfo, capacity) == offset_of!(PageReportingDevInfo, order) + 4
    );
    assert!(align_of::<PageReportingDevInfo>() == align_of::<bindings::delayed_work>());
};

#[allow(improper_ctypes)]
extern "C" {
    fn page_reporting_register(prdev: *mut PageReportingDevInfo) -> c_int;
    fn page_reporting_unregister(prdev: *mut PageReportingDevInfo);
}

/// Something that can hand free memory to the host.
pub(crate) trait Report: Send + Sync + 'static {
    /// Reports the free guest-physical ranges `ranges` (1 to [`CAPACITY`] of them, each a
    /// whole free block) and returns once the host is done with them: the pages go back to
    /// the guest's free lists right after.  Must not allocate memory, and must return in
    /// bounded time.
    ///
    /// # Errors
    ///
    /// Any errno: the pages were not reported (the core leaves them unmarked and stops this
    /// pass).
    fn report(&self, ranges: &[Sg]) -> Result;
}

/// The registered structure and what its callback needs; `info` first so that the callback
/// finds the rest from the address the core passes.
#[repr(C)]
struct Block<T: Report> {
    info: Opaque<PageReportingDevInfo>,
    target: Arc<T>,
}

/// A page reporting registration; dropping it unregisters, which waits for a report in
/// progress.
///
/// # Invariants
///
/// `block.info` is registered with `page_reporting_register()` until `Drop`, with
/// [`report_callback::<T>`] as its callback.
pub(crate) struct PageReporting<T: Report> {
    block: Pin<KBox<Block<T>>>,
}

// SAFETY: The block is only touched by the page reporting core (its work item, serialized by
// `page_reporting_mutex` against registration) and by `Drop`; `T` is `Send + Sync`.
unsafe impl<T: Report> Send for PageReporting<T> {}
// SAFETY: Shared references give no access to the block.
unsafe impl<T: Report> Sync for PageReporting<T> {}

impl<T: Report> PageReporting<T> {
    /// Registers `target` to receive reports of at most `capacity` blocks (capped at
    /// [`CAPACITY`]; the core starts a first pass over all free memory about 2 s later).
    ///
    /// # Errors
    ///
    /// `EBUSY` if another device reports already, `ENOMEM`.
    pub(crate) fn new(target: Arc<T>, capacity: usize) -> Result<Self> {
        let block = KBox::pin(
            Block {
                info: Opaque::zeroed(),
                target,
            },
            GFP_KERNEL,
        )?;
        let info = block.info.get();
        // SAFETY: `info` points to the zeroed structure in the pinned block, which nothing
        // else references yet; writing plain fields through the raw pointer is sound.
        unsafe {
            (*info).report = Some(report_callback::<T>);
            (*info).order = ORDER_UNSPECIFIED;
            // CAST: at most `CAPACITY`.
            (*info).capacity = capacity.clamp(1, CAPACITY) as c_uint;
        }
        // SAFETY:
        // - `info` is a valid, pinned `struct page_reporting_dev_info` (layout asserted above)
        //   that stays at this address until `Drop` unregisters it;
        // - its callback is `report_callback::<T>`, whose context (`target`) lives in the same
        //   block, as long.
        kernel::error::to_result(unsafe { page_reporting_register(info) })?;
        // INVARIANT: registered just above, with `report_callback::<T>`.
        Ok(Self { block })
    }
}

impl<T: Report> Drop for PageReporting<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by `new` (type invariant).  Unregistering unpublishes the
        // device, waits for an RCU grace period, and cancels the core's work item waiting for
        // a report in progress, so that no callback runs once this returns and the block may
        // be freed.
        unsafe { page_reporting_unregister(self.block.info.get()) };
    }
}

/// Reads the guest-physical range of one scatterlist entry the core filled
/// (`sg_phys()`, `sg->length`); `None` for an entry that is not a plain page range.
pub(crate) fn sg_range(entry: &bindings::scatterlist) -> Option<Sg> {
    // CAST: the flag bits are small constants; `page_link` is a `c_ulong`.
    let flags = (bindings::SG_CHAIN | bindings::SG_END) as kernel::ffi::c_ulong;
    if entry.page_link & (bindings::SG_CHAIN as kernel::ffi::c_ulong) != 0 {
        // A chain link, not a page: the core never makes one (its table is flat).
        return None;
    }
    // CAST: `page_link` holds a `struct page *` in its bits above the flags.
    let page = (entry.page_link & !flags) as *const bindings::page;
    if page.is_null() || entry.length == 0 {
        return None;
    }
    // CAST: `PAGE_SHIFT` is 12.
    let base = page_to_pfn(page).checked_shl(PAGE_SHIFT as u32)?;
    let addr = base.checked_add(u64::from(entry.offset))?;
    Some(Sg::new(addr, entry.length))
}

/// The page reporting callback.
///
/// # Safety
///
/// Called by the page reporting core only: `prdev` is the `info` of a live [`Block<T>`]
/// (registered, so alive until unregistered, which waits for this call), and `sg` points to
/// `nents` initialized entries of a flat scatterlist, each set to a free block isolated from
/// the allocator for the duration of the call.
unsafe extern "C" fn report_callback<T: Report>(
    prdev: *mut PageReportingDevInfo,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int {
    // SAFETY: `prdev` is the first field of a `#[repr(C)]` `Block<T>` (`Opaque` is
    // transparent), alive while registered (caller's guarantee).
    let block = unsafe { &*prdev.cast::<Block<T>>() };
    let Ok(n) = usize::try_from(nents) else {
        return EINVAL.to_errno();
    };
    if n == 0 || n > CAPACITY || sg.is_null() {
        return EINVAL.to_errno();
    }
    // On the stack: the callback must not allocate (its pages are out of the allocator).
    let mut ranges = [Sg::new(0, 0); CAPACITY];
    for (i, range) in ranges.iter_mut().take(n).enumerate() {
        // SAFETY: `sg` holds `n` initialized entries (caller's guarantee), read only.
        let entry = unsafe { &*sg.add(i) };
        match sg_range(entry) {
            Some(r) => *range = r,
            None => return EINVAL.to_errno(),
        }
    }
    let Some(ranges) = ranges.get(..n) else {
        return EINVAL.to_errno();
    };
    match block.target.report(ranges) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
