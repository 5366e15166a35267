// SPDX-License-Identifier: GPL-2.0

//! Memory-management glue the kernel crate does not offer yet: allocating balloon pages with
//! the balloon's GFP flags, freeing them in batches, blocks of pages for free page hinting,
//! their page frame numbers, what the kernel does to freed pages (zeroing, poisoning) and the
//! memory counters.  Its submodules are the rest of that glue: the page list the balloon core
//! keeps, and page migration, in `mm/migrate.rs`, free page reporting in `mm/reporting.rs`;
//! the pressure hooks are in `pressure.rs`.
//!
//! Holds `unsafe` for the page allocator (`BalloonPage`, `PageBlock`), page frame numbers
//! (`vmemmap_base`), the init-on-free and poisoning switches and the memory counters, which
//! have no Rust abstraction in 7.2.  The crate's other `unsafe` is in the two submodules and
//! `pressure.rs`.

use core::ptr::NonNull;
use kernel::{
    alloc::KVec,
    bindings,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
};

#[path = "mm/migrate.rs"]
pub(crate) mod migrate;

#[path = "mm/reporting.rs"]
pub(crate) mod reporting;

/// Shift of the balloon's page frame numbers: the device counts 4 KiB pages whatever the
/// guest's page size (`VIRTIO_BALLOON_PFN_SHIFT`).
pub(crate) const BALLOON_PFN_SHIFT: u32 = 12;

/// Balloon (4 KiB) pages per guest page.
// CAST: `PAGE_SIZE >> 12` is at least 1 and small.
pub(crate) const PAGES_PER_PAGE: u32 = (PAGE_SIZE >> BALLOON_PFN_SHIFT) as u32;

/// `gfp_t` bit `bit`.
pub(crate) const fn gfp(bit: u32) -> bindings::gfp_t {
    1 << bit
}

/// `__GFP_MOVABLE` when the kernel can migrate balloon pages, else nothing.
#[cfg(CONFIG_BALLOON_MIGRATION)]
const MOVABLE: bindings::gfp_t = gfp(bindings::___GFP_MOVABLE_BIT);
/// `__GFP_MOVABLE` when the kernel can migrate balloon pages, else nothing.
#[cfg(not(CONFIG_BALLOON_MIGRATION))]
const MOVABLE: bindings::gfp_t = 0;

/// Flags of a balloon page, as `balloon_page_alloc()`: `GFP_HIGHUSER_MOVABLE` (any zone,
/// reclaim allowed, from movable page blocks) but give up early and quietly, and never dip
/// into the emergency reserves: `__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC`.
/// `__GFP_MOVABLE` because the pages are movable: once the device holds them they sit on the
/// balloon core's list, from which compaction migrates them (`migrate.rs`), so they do not
/// pin the movable page blocks they come from.  Without CONFIG_BALLOON_MIGRATION they could
/// not move, and are `GFP_HIGHUSER` as in C.
const BALLOON_GFP: bindings::gfp_t = gfp(bindings::___GFP_DIRECT_RECLAIM_BIT)
    | gfp(bindings::___GFP_KSWAPD_RECLAIM_BIT)
    | gfp(bindings::___GFP_IO_BIT)
    | gfp(bindings::___GFP_FS_BIT)
    | gfp(bindings::___GFP_HARDWALL_BIT)
    | gfp(bindings::___GFP_HIGHMEM_BIT)
    | MOVABLE
    | gfp(bindings::___GFP_NORETRY_BIT)
    | gfp(bindings::___GFP_NOWARN_BIT)
    | gfp(bindings::___GFP_NOMEMALLOC_BIT);

/// Order of the blocks inflation takes whole when the allocator has them free: a page block
/// (2 MiB with 4 KiB pages), the unit of compaction and of huge pages.
pub(crate) const BLOCK_ORDER: u32 = 9;

/// Guest pages of a block of [`BLOCK_ORDER`].
pub(crate) const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// Flags of a whole block: the balloon's, without any reclaim (no direct reclaim or
/// compaction, no waking kswapd): a block is taken only where the allocator has one free,
/// and order-0 pages (with the balloon's own reclaim rules) fill the rest.  Movable like the
/// pages it is split into.
const BLOCK_GFP: bindings::gfp_t = gfp(bindings::___GFP_HARDWALL_BIT)
    | gfp(bindings::___GFP_HIGHMEM_BIT)
    | MOVABLE
    | gfp(bindings::___GFP_NORETRY_BIT)
    | gfp(bindings::___GFP_NOWARN_BIT)
    | gfp(bindings::___GFP_NOMEMALLOC_BIT);

/// The frame number of `page` (`page_to_pfn()`).
pub(crate) fn pfn_of(page: *const bindings::page) -> u64 {
    // x86-64 with SPARSEMEM_VMEMMAP: `struct page`s form one virtual array starting at
    // `vmemmap_base`, indexed by PFN (`__page_to_pfn()` in `memory_model.h`).
    // SAFETY: `vmemmap_base` is set once at boot, before any module loads.
    let base = unsafe { bindings::vmemmap_base };
    // CAST: addresses as integers for the array index computation (`c_ulong` is `usize`).
    let offset = (page as usize).wrapping_sub(base);
    // CAST: a PFN fits in 64 bits.
    (offset / core::mem::size_of::<bindings::page>()) as u64
}

/// The `struct page` address of frame `pfn` (`pfn_to_page()`), for the test flavour's
/// scatterlist entries; only computed, never dereferenced here.
#[cfg(virtio_rs_kunit)]
pub(crate) fn page_addr_of(pfn: usize) -> usize {
    // SAFETY: `vmemmap_base` is set once at boot, before any module loads.
    let base = unsafe { bindings::vmemmap_base };
    base + pfn * core::mem::size_of::<bindings::page>()
}

/// The device's (4 KiB) frame numbers of `page`.
pub(crate) fn balloon_pfns_of(page: *const bindings::page) -> impl Iterator<Item = u64> {
    let first = pfn_of(page) * u64::from(PAGES_PER_PAGE);
    (0..u64::from(PAGES_PER_PAGE)).map(move |i| first + i)
}

/// A reference to a guest page of the balloon; dropped (and the page freed if it was the last
/// reference) when dropped.
///
/// Transparent over the page pointer, so that a slice of them is an array of `struct page *`
/// for the batched allocator and [`release_pages()`](BalloonPage::release_all).
///
/// # Invariants
///
/// `page` is an order-0 page from the page allocator on which this value owns one reference
/// (the only one, for a page the balloon allocated; a page migration lends the driver pages
/// the kernel references too).
#[repr(transparent)]
pub(crate) struct BalloonPage {
    page: NonNull<bindings::page>,
}

// SAFETY: A page may be freed from any thread.
unsafe impl Send for BalloonPage {}
// SAFETY: Shared references only read the page's address.
unsafe impl Sync for BalloonPage {}

impl BalloonPage {
    /// Allocates up to `n` pages into `out` (within its spare capacity) with the batched
    /// page allocator, which takes them from the per-CPU free lists under one lock when
    /// memory is plentiful and falls back to one reclaiming allocation otherwise; returns how
    /// many it added.  Fewer than `n` means memory is short (no warning, no OOM kill).
    ///
    /// With `blocks`, whole free blocks of [`BLOCK_ORDER`] come first, each split into its
    /// order-0 pages (`split_page()`), while at least a block is wanted and fits: one trip
    /// through the allocator for [`BLOCK_PAGES`] pages, and a block the balloon gives back
    /// whole merges again at once.  Order-0 pages make up the rest.
    pub(crate) fn alloc_bulk(out: &mut KVec<Self>, n: usize, blocks: bool) -> usize {
        /// Pages per call of the batched allocator (its array lives on the stack).
        const CHUNK: usize = 32;
        let mut added = 0;
        while blocks && n - added >= BLOCK_PAGES && out.capacity() - out.len() >= BLOCK_PAGES {
            // SAFETY: No preconditions; `BLOCK_ORDER` is below `MAX_PAGE_ORDER`.
            let block = unsafe { bindings::alloc_pages(BLOCK_GFP, BLOCK_ORDER) };
            let Some(block) = NonNull::new(block) else {
                break;
            };
            // SAFETY: `block` is a non-compound block of order `BLOCK_ORDER` just allocated
            // (no `__GFP_COMP`), whose one reference is ours; `split_page()` gives each of
            // its pages a reference of its own, which we own.
            unsafe { bindings::split_page(block.as_ptr(), BLOCK_ORDER) };
            for i in 0..BLOCK_PAGES {
                // SAFETY: The `struct page`s of a block are consecutive (SPARSEMEM_VMEMMAP:
                // one virtual array indexed by frame number), so `block + i` for
                // `i < BLOCK_PAGES` is a page of the block.
                let page = unsafe { block.add(i) };
                // INVARIANT: an order-0 page of the split block, with its own reference.
                // Cannot fail: the loop condition left room for a whole block.
                let _ = out.push_within_capacity(Self { page });
            }
            added += BLOCK_PAGES;
        }
        loop {
            let want = CHUNK.min(n - added).min(out.capacity() - out.len());
            if want == 0 {
                break;
            }
            let mut array = [core::ptr::null_mut::<bindings::page>(); CHUNK];
            // SAFETY: `array` holds `want <= CHUNK` null entries for the allocator to fill; a
            // null nodemask means any node.
            let got = unsafe {
                bindings::alloc_pages_bulk_noprof(
                    BALLOON_GFP,
                    NODE,
                    core::ptr::null_mut(),
                    // CAST: at most `CHUNK`.
                    want as kernel::ffi::c_int,
                    array.as_mut_ptr(),
                )
            };
            // CAST: at most `want`.
            let got = (got as usize).min(want);
            for &page in &array[..got] {
                let Some(page) = NonNull::new(page) else {
                    continue;
                };
                // INVARIANT: the allocator just gave us this order-0 page and its reference.
                // Cannot fail: `got <= want` fits the spare capacity.
                let _ = out.push_within_capacity(Self { page });
                added += 1;
            }
            if got < want {
                break;
            }
        }
        added
    }

    /// Frees every page of `pages` with one batched call (`release_pages()`), leaving it
    /// empty with its capacity.
    pub(crate) fn release_all(pages: &mut KVec<Self>) {
        if pages.is_empty() {
            return;
        }
        let (ptr, len, cap) = core::mem::take(pages).into_raw_parts();
        // SAFETY: `Self` is transparent over `NonNull<page>`, so the vector's buffer is an
        // array of `len` valid `struct page *`; one reference to each page is ours (type
        // invariant) and `release_pages()` drops it, freeing the page if it was the last.  `len` is at most
        // `isize::MAX / 8`; balloon vectors hold at most a message's pages.
        unsafe {
            bindings::release_pages(
                bindings::release_pages_arg { pages: ptr.cast() },
                kernel::ffi::c_int::try_from(len).unwrap_or(kernel::ffi::c_int::MAX),
            )
        };
        // SAFETY: `ptr` and `cap` come from `into_raw_parts` of a vector of this type; length
        // 0 forgets the owners of the pages just freed.
        *pages = unsafe { KVec::from_raw_parts(ptr, 0, cap) };
    }

    /// Takes over a reference to `page`.
    ///
    /// # Safety
    ///
    /// `page` is an order-0 page and the caller owns one reference to it, which it gives to
    /// the new value.
    pub(crate) unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        // INVARIANT: the caller's guarantee.
        Self { page }
    }

    /// The page.
    pub(crate) fn as_ptr(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    /// The device's (4 KiB) frame numbers of this page.
    pub(crate) fn balloon_pfns(&self) -> impl Iterator<Item = u64> {
        balloon_pfns_of(self.page.as_ptr())
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: We own a reference to this order-0 page (type invariant), dropped exactly
        // once; the page is freed if it was the last.
        unsafe { bindings::__free_pages(self.page.as_ptr(), 0) }
    }
}

/// A block of `1 << ORDER` contiguous guest pages from the page allocator (free page
/// hinting takes them); freed when dropped.
///
/// # Invariants
///
/// `page` is the first page of an order-`ORDER` allocation that this value owns.
pub(crate) struct PageBlock<const ORDER: u32> {
    page: NonNull<bindings::page>,
}

// SAFETY: Pages may be freed from any thread.
unsafe impl<const ORDER: u32> Send for PageBlock<ORDER> {}
// SAFETY: Shared references only read the page's address.
unsafe impl<const ORDER: u32> Sync for PageBlock<ORDER> {}

impl<const ORDER: u32> PageBlock<ORDER> {
    /// Takes a block from the allocator with the flags `gfp`; `None` when it has none to
    /// give.
    pub(crate) fn alloc(gfp: bindings::gfp_t) -> Option<Self> {
        // SAFETY:
        // - Any flags are valid for `alloc_pages()` (they choose how hard it tries).
        // - Any order is: one above `MAX_PAGE_ORDER` fails with `NULL`.
        let page = unsafe { bindings::alloc_pages(gfp, ORDER) };
        // INVARIANT: a non-null result is an order-`ORDER` allocation, now ours.
        NonNull::new(page).map(|page| Self { page })
    }

    /// The block's guest-physical address (a legacy device takes those).
    pub(crate) fn addr(&self) -> u64 {
        pfn_of(self.page.as_ptr()) << PAGE_SHIFT
    }
}

impl<const ORDER: u32> Drop for PageBlock<ORDER> {
    fn drop(&mut self) {
        // SAFETY:
        // - `page` is the first page of an order-`ORDER` allocation (type invariant), which
        //   is what `__free_pages()` takes with `ORDER`.
        // - This value owns it (type invariant) and frees it once, here.
        unsafe { bindings::__free_pages(self.page.as_ptr(), ORDER) }
    }
}

/// Shift of the zone number in a page's flags (`ZONES_PGSHIFT` in `mmzone.h`: the zone bits
/// sit below the section and node bits, at the top of the word).
// CAST: the widths are a few bits each.
const ZONES_PGSHIFT: u32 =
    usize::BITS - bindings::SECTIONS_WIDTH - bindings::NODES_WIDTH - bindings::ZONES_WIDTH;

const _: () = assert!(bindings::ZONES_WIDTH != 0 && bindings::ZONES_WIDTH <= 3);

/// The zone of `page`, as its index in its node's zones (`page_zonenum()`).
///
/// # Safety
///
/// `page` points to a valid `struct page`.
unsafe fn zone_of(page: NonNull<bindings::page>) -> usize {
    // SAFETY: `page` points to a valid `struct page` (the caller's guarantee); its zone bits
    // are set once at boot and never change, the other bits of the word change atomically:
    // a racy read of the word, like `READ_ONCE()`, yields the right zone.
    let flags = unsafe { (&raw const (*page.as_ptr()).flags.f).read_volatile() };
    // CAST: `ZONES_MASK` is 3; `c_ulong` is `usize` in the kernel's Rust.
    (flags >> ZONES_PGSHIFT) & bindings::ZONES_MASK as usize
}

/// Moves the pages of `pages` out of the managed page counts (`delta` -1: the device holds
/// them) or back into them (+1): `adjust_managed_page_count()` once per zone the pages come
/// from, instead of once per page as the balloon core does.  Each call recomputes every
/// zone's lowmem reserve (`setup_per_zone_lowmem_reserve()`), which per page costs more than
/// the rest of the balloon's work on a page.
pub(crate) fn adjust_managed(pages: &[BalloonPage], delta: isize) {
    // CAST: `MAX_NR_ZONES` is 4 or so.
    const ZONES: usize = bindings::MAX_NR_ZONES as usize;
    let mut per_zone: [(Option<NonNull<bindings::page>>, isize); ZONES] = [(None, 0); ZONES];
    for page in pages {
        // SAFETY: A `BalloonPage` is a valid page (type invariant).
        let zone = unsafe { zone_of(page.page) };
        if let Some(entry) = per_zone.get_mut(zone) {
            entry.0 = Some(page.page);
            entry.1 += delta;
        }
    }
    for (page, count) in per_zone {
        if let Some(page) = page {
            // SAFETY: `page` is a valid page of the zone whose `count` pages move (the
            // function only takes its zone); the managed counts are atomics, the reserves
            // are recomputed under their own lock.
            // (`c_long` is `isize` in the kernel's Rust.)
            unsafe { bindings::adjust_managed_page_count(page.as_ptr(), count) };
        }
    }
}

/// [`adjust_managed`] for one page (page migration).
///
/// # Safety
///
/// `page` points to a valid `struct page`.
pub(crate) unsafe fn adjust_managed_one(page: NonNull<bindings::page>, delta: isize) {
    // SAFETY: `page` is valid (the caller's guarantee); the function only takes its zone.
    // (`c_long` is `isize` in the kernel's Rust.)
    unsafe { bindings::adjust_managed_page_count(page.as_ptr(), delta) };
}

/// Whether two pages are in the same zone.
///
/// # Safety
///
/// `a` and `b` point to valid `struct page`s.
pub(crate) unsafe fn same_zone(a: NonNull<bindings::page>, b: NonNull<bindings::page>) -> bool {
    // SAFETY: The caller's guarantee.
    unsafe { zone_of(a) == zone_of(b) }
}

/// Whether the kernel zeroes pages when they are freed (`want_init_on_free()`: boot option
/// `init_on_free=1` or `CONFIG_INIT_ON_FREE_DEFAULT_ON`).
///
/// `want_init_on_free()` is a static inline over the exported static key `init_on_free`; it
/// is read here as `static_key_enabled()` does, which is valid whether or not the kernel
/// patches its branches (`CONFIG_JUMP_LABEL`): the key's `enabled` count is kept in both cases.
pub(crate) fn want_init_on_free() -> bool {
    // SAFETY: `init_on_free` is an exported static key (`EXPORT_SYMBOL(init_on_free)` in
    // `mm/mm_init.c`), valid for the kernel's lifetime, whose type bindgen took from the same
    // configuration (`static_key_false` or `static_key_true`, both wrapping a `static_key`);
    // its count is only written by the static-key code, atomically, and is read once here,
    // racy like `atomic_read()`, without forming a reference to the mutable static.
    let enabled = unsafe {
        let key = core::ptr::addr_of!(bindings::init_on_free);
        core::ptr::addr_of!((*key).key.enabled.counter).read_volatile()
    };
    enabled > 0
}

/// Whether the kernel poisons freed pages (`page_poisoning_enabled_static()`: boot option
/// `page_poison=1` with `CONFIG_PAGE_POISONING`).
#[cfg(CONFIG_PAGE_POISONING)]
pub(crate) fn page_poisoning_enabled() -> bool {
    // SAFETY: As in `want_init_on_free()`, for the exported static key
    // `_page_poisoning_enabled` (`EXPORT_SYMBOL` in `mm/page_poison.c`).
    let enabled = unsafe {
        let key = core::ptr::addr_of!(bindings::_page_poisoning_enabled);
        core::ptr::addr_of!((*key).key.enabled.counter).read_volatile()
    };
    enabled > 0
}

/// Whether the kernel poisons freed pages: never without `CONFIG_PAGE_POISONING`.
#[cfg(not(CONFIG_PAGE_POISONING))]
pub(crate) fn page_poisoning_enabled() -> bool {
    false
}

/// What the guest writes into the pages it frees, as the device's `poison_val`: `Some(0)`
/// when freed pages are zeroed (`init_on_free`), `Some` of `PAGE_POISON` in every byte when
/// they are poisoned, `None` when freed pages keep whatever they held.
pub(crate) fn free_page_poison() -> Option<u32> {
    if want_init_on_free() {
        Some(0)
    } else if page_poisoning_enabled() {
        // CAST: `PAGE_POISON` is the byte 0xaa.
        Some(u32::from_ne_bytes([bindings::PAGE_POISON as u8; 4]))
    } else {
        None
    }
}

#[cfg(not(all(CONFIG_X86_64, CONFIG_SPARSEMEM_VMEMMAP)))]
compile_error!("pfn_of() supports x86-64 with SPARSEMEM_VMEMMAP only");

/// The node balloon pages come from: the only one (`numa_mem_id()` without NUMA).
const NODE: kernel::ffi::c_int = 0;

#[cfg(CONFIG_NUMA)]
compile_error!("BalloonPage::alloc_bulk() supports kernels without NUMA only");

/// What the kernel's memory counters say, for the statistics queue (`update_balloon_stats()`
/// and `update_balloon_vm_stats()` in C).  Counts of pages are already in bytes.
#[derive(Clone, Copy, Default)]
pub(crate) struct MemSnapshot {
    /// Bytes swapped in (`PSWPIN` pages).
    pub(crate) swap_in: u64,
    /// Bytes swapped out (`PSWPOUT` pages).
    pub(crate) swap_out: u64,
    /// Major page faults.
    pub(crate) major_faults: u64,
    /// All page faults.
    pub(crate) minor_faults: u64,
    /// Free memory in bytes.
    pub(crate) free: u64,
    /// Total memory in bytes.
    pub(crate) total: u64,
    /// Available memory in bytes (`si_mem_available()`).
    pub(crate) available: u64,
    /// Page cache in bytes (`NR_FILE_PAGES`).
    pub(crate) caches: u64,
    /// Successful huge page allocations.
    pub(crate) htlb_alloc: u64,
    /// Failed huge page allocations.
    pub(crate) htlb_fail: u64,
    /// OOM kills.
    pub(crate) oom_kills: u64,
    /// Direct-reclaim stalls over all zones.
    pub(crate) alloc_stalls: u64,
    /// Bytes scanned by kswapd.
    pub(crate) async_scan: u64,
    /// Bytes scanned by direct reclaim.
    pub(crate) direct_scan: u64,
    /// Bytes reclaimed by kswapd.
    pub(crate) async_reclaim: u64,
    /// Bytes reclaimed by direct reclaim.
    pub(crate) direct_reclaim: u64,
}

/// Guest pages the balloon may still take without leaving the guest short: what the kernel
/// estimates available (`MemAvailable`) minus a reserve of 1/32 of the guest's memory, at
/// least 32 MiB.  A target above what the guest can give is met only this far, so that
/// inflating never drives the guest into its OOM killer.
pub(crate) fn inflate_headroom() -> u64 {
    let mut info = bindings::sysinfo::default();
    // SAFETY: `info` is a valid `struct sysinfo` to fill.
    unsafe { bindings::si_meminfo(&mut info) };
    // SAFETY: No preconditions.
    let available = u64::try_from(unsafe { bindings::si_mem_available() }).unwrap_or(0);
    // CAST: `__kernel_ulong_t` is 64 bits here; `si_meminfo()` counts in pages.
    let total = info.totalram as u64;
    // CAST: `PAGE_SIZE` fits in 64 bits.
    let floor = (32 << 20) / PAGE_SIZE as u64;
    available.saturating_sub((total / 32).max(floor))
}

/// Bytes of `pages` pages.
fn pages_to_bytes(pages: u64) -> u64 {
    // CAST: `PAGE_SIZE` fits in 64 bits.
    pages.saturating_mul(PAGE_SIZE as u64)
}

/// A global node statistic (`global_node_page_state()`), clamped at 0 like the C helper.
fn node_stat(item: bindings::node_stat_item) -> u64 {
    // CAST: the enumerators are small array indexes.
    let idx = item as usize;
    // SAFETY: `vm_node_stat` is an exported array of `NR_VM_NODE_STAT_ITEMS` atomics, valid for
    // the kernel's lifetime; the index is an enumerator below that count (bindgen'd from the
    // same headers); the counter is read once, racy like `atomic_long_read()`.
    let val = unsafe {
        let stats = core::ptr::addr_of!(bindings::vm_node_stat);
        core::ptr::addr_of!((*stats)[idx].counter).read_volatile()
    };
    u64::try_from(val).unwrap_or(0)
}

impl MemSnapshot {
    /// Reads the counters now.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the event array cannot be allocated.
    pub(crate) fn now() -> kernel::error::Result<Self> {
        use kernel::alloc::{flags::GFP_KERNEL, KVec};
        // CAST: the count of event items is a small enumerator.
        let n = bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize;
        let mut events = KVec::from_elem(0 as kernel::ffi::c_ulong, n, GFP_KERNEL)?;
        // SAFETY: `events` holds `NR_VM_EVENT_ITEMS` entries, what `all_vm_events()` fills.
        unsafe { bindings::all_vm_events(events.as_mut_ptr()) };
        // CAST: enumerators index the array just filled; `c_ulong` is 64 bits here.
        let ev = |item: bindings::vm_event_item| events.get(item as usize).map_or(0, |&v| v as u64);

        let mut info = bindings::sysinfo::default();
        // SAFETY: `info` is a valid `struct sysinfo` to fill.
        unsafe { bindings::si_meminfo(&mut info) };
        // SAFETY: No preconditions.
        let available = unsafe { bindings::si_mem_available() };
        let unit = u64::from(info.mem_unit);

        Ok(Self {
            swap_in: pages_to_bytes(ev(bindings::vm_event_item_PSWPIN)),
            swap_out: pages_to_bytes(ev(bindings::vm_event_item_PSWPOUT)),
            major_faults: ev(bindings::vm_event_item_PGMAJFAULT),
            minor_faults: ev(bindings::vm_event_item_PGFAULT),
            // CAST: `__kernel_ulong_t` is 64 bits here.
            free: (info.freeram as u64).saturating_mul(unit),
            // CAST: as above.
            total: (info.totalram as u64).saturating_mul(unit),
            available: pages_to_bytes(u64::try_from(available).unwrap_or(0)),
            caches: pages_to_bytes(node_stat(bindings::node_stat_item_NR_FILE_PAGES)),
            htlb_alloc: ev(bindings::vm_event_item_HTLB_BUDDY_PGALLOC),
            htlb_fail: ev(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
            oom_kills: ev(bindings::vm_event_item_OOM_KILL),
            alloc_stalls: ev(bindings::vm_event_item_ALLOCSTALL_DMA)
                + ev(bindings::vm_event_item_ALLOCSTALL_DMA32)
                + ev(bindings::vm_event_item_ALLOCSTALL_NORMAL)
                + ev(bindings::vm_event_item_ALLOCSTALL_MOVABLE),
            async_scan: pages_to_bytes(node_stat(bindings::node_stat_item_PGSCAN_KSWAPD)),
            direct_scan: pages_to_bytes(node_stat(bindings::node_stat_item_PGSCAN_DIRECT)),
            async_reclaim: pages_to_bytes(node_stat(bindings::node_stat_item_PGSTEAL_KSWAPD)),
            direct_reclaim: pages_to_bytes(node_stat(bindings::node_stat_item_PGSTEAL_DIRECT)),
        })
    }
}
