// SPDX-License-Identifier: GPL-2.0

//! Memory-management glue the kernel crate does not offer yet: allocating a balloon page with
//! the balloon's GFP flags, its page frame number, and managed-page accounting.  All `unsafe`
//! of the balloon lives here.

use core::ptr::NonNull;
use kernel::{bindings, page::PAGE_SIZE};

/// Shift of the balloon's page frame numbers: the device counts 4 KiB pages whatever the
/// guest's page size (`VIRTIO_BALLOON_PFN_SHIFT`).
pub(crate) const BALLOON_PFN_SHIFT: u32 = 12;

/// Balloon (4 KiB) pages per guest page.
// CAST: `PAGE_SIZE >> 12` is at least 1 and small.
pub(crate) const PAGES_PER_PAGE: u32 = (PAGE_SIZE >> BALLOON_PFN_SHIFT) as u32;

/// `gfp_t` bit `bit`.
const fn gfp(bit: u32) -> bindings::gfp_t {
    1 << bit
}

/// Flags of a balloon page: `GFP_HIGHUSER` (any zone, reclaim allowed) but give up early and
/// quietly, and never dip into the emergency reserves: `__GFP_NORETRY | __GFP_NOWARN |
/// __GFP_NOMEMALLOC`, as `balloon_page_alloc()`.  Not `__GFP_MOVABLE`: this driver does not
/// implement balloon page migration, so its pages must not sit in movable page blocks.
const BALLOON_GFP: bindings::gfp_t = gfp(bindings::___GFP_DIRECT_RECLAIM_BIT)
    | gfp(bindings::___GFP_KSWAPD_RECLAIM_BIT)
    | gfp(bindings::___GFP_IO_BIT)
    | gfp(bindings::___GFP_FS_BIT)
    | gfp(bindings::___GFP_HARDWALL_BIT)
    | gfp(bindings::___GFP_HIGHMEM_BIT)
    | gfp(bindings::___GFP_NORETRY_BIT)
    | gfp(bindings::___GFP_NOWARN_BIT)
    | gfp(bindings::___GFP_NOMEMALLOC_BIT);

/// One guest page held by the balloon; freed when dropped.
///
/// # Invariants
///
/// `page` is an order-0 page from `alloc_pages()` that this value owns.
pub(crate) struct BalloonPage {
    page: NonNull<bindings::page>,
}

// SAFETY: A page may be freed from any thread.
unsafe impl Send for BalloonPage {}
// SAFETY: Shared references only read the page's address.
unsafe impl Sync for BalloonPage {}

impl BalloonPage {
    /// Allocates a page for the balloon, or `None` when memory is short (no warning, no
    /// retries, no OOM kill).
    pub(crate) fn alloc() -> Option<Self> {
        // SAFETY: `alloc_pages()` has no preconditions; order 0.
        let page = NonNull::new(unsafe { bindings::alloc_pages(BALLOON_GFP, 0) })?;
        // INVARIANT: we own the page just allocated.
        Some(Self { page })
    }

    /// The page's frame number (`page_to_pfn()`).
    pub(crate) fn pfn(&self) -> u64 {
        // x86-64 with SPARSEMEM_VMEMMAP: `struct page`s form one virtual array starting at
        // `vmemmap_base`, indexed by PFN (`__page_to_pfn()` in `memory_model.h`).
        // SAFETY: `vmemmap_base` is set once at boot, before any module loads.
        let base = unsafe { bindings::vmemmap_base };
        // CAST: addresses as integers for the array index computation (`c_ulong` is `usize`).
        let offset = (self.page.as_ptr() as usize).wrapping_sub(base);
        // CAST: a PFN fits in 64 bits.
        (offset / core::mem::size_of::<bindings::page>()) as u64
    }

    /// The device's (4 KiB) frame numbers of this page.
    pub(crate) fn balloon_pfns(&self) -> impl Iterator<Item = u64> {
        let first = self.pfn() * u64::from(PAGES_PER_PAGE);
        (0..u64::from(PAGES_PER_PAGE)).map(move |i| first + i)
    }

    /// Removes the page from (`delta < 0`) or returns it to (`delta > 0`) the managed pages
    /// of its zone, so that `MemTotal` reflects the balloon.
    pub(crate) fn adjust_managed(&self, delta: isize) {
        // SAFETY: `page` is a valid page we own (type invariant).
        unsafe { bindings::adjust_managed_page_count(self.page.as_ptr(), delta) }
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: We own this order-0 page (type invariant); it is freed exactly once.
        unsafe { bindings::__free_pages(self.page.as_ptr(), 0) }
    }
}

#[cfg(not(all(CONFIG_X86_64, CONFIG_SPARSEMEM_VMEMMAP)))]
compile_error!("BalloonPage::pfn() supports x86-64 with SPARSEMEM_VMEMMAP only");
