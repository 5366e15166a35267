// SPDX-License-Identifier: GPL-2.0

//! Memory a legacy device reads or writes, and the address the device must be given for it.
//!
//! A legacy (virtio 0.9.5) device cannot negotiate `VIRTIO_F_ACCESS_PLATFORM`, so it does not
//! go through the platform's DMA translation: QEMU's legacy devices read and write
//! guest-physical addresses even behind a vIOMMU, and C's virtio core gives legacy devices
//! physical addresses (`vring_use_map_api()` is false for them).  A DMA handle is the address
//! as seen *through* that translation; behind an IOMMU in translated mode it is an I/O virtual
//! address that means nothing to such a device, which would then read and write whatever
//! guest memory happens to sit at that number.
//!
//! So every address a legacy device gets (the ring's page frame number, descriptor
//! addresses, indirect tables, driver buffers) is a guest-physical address, computed here:
//!
//! - [`guest_phys`] walks the kernel page tables (`slow_virt_to_phys()`, exported by x86) for
//!   every page of a buffer, so it is right for the linear map and for vmalloc space alike,
//!   and refuses a buffer whose pages are not physically contiguous (a legacy device reads a
//!   descriptor's bytes at consecutive physical addresses).
//! - [`LegacyBuf`] is coherent memory allocated with `DMA_ATTR_FORCE_CONTIGUOUS`: behind an
//!   IOMMU, a coherent allocation is otherwise a virtual mapping of scattered pages
//!   (`iommu_dma_alloc_remap()`); without one, the coherent mask still keeps it below what
//!   the legacy interface can address (`QUEUE_PFN` is 32 bits).  Its DMA handle stays
//!   available (through `Deref`), but only for comparison: a legacy device is given
//!   [`LegacyBuf::device_addr`].
//!
//! Holds `unsafe` for `slow_virt_to_phys()`, the guest-physical address of memory the legacy
//! device reads.

use core::{
    ffi::c_void,
    ops::Deref, //
};
use kernel::{
    bindings,
    device::{
        self,
        Bound, //
    },
    dma::{
        attrs::DMA_ATTR_FORCE_CONTIGUOUS,
        Coherent, //
    },
    page::PAGE_SIZE,
    prelude::*,
    transmute::{
        AsBytes,
        FromBytes, //
    },
};

#[cfg(not(CONFIG_X86_64))]
compile_error!("guest_phys() walks page tables with slow_virt_to_phys(), which only x86 has");

/// The guest-physical address of the `len` bytes of kernel memory at `ptr`.
///
/// # Errors
///
/// `EINVAL` if `len` is 0 or the range wraps, or if its pages are not physically contiguous.
///
/// # Safety
///
/// The `len` bytes at `ptr` must be mapped kernel memory (linear map or vmalloc space) for
/// the duration of the call.
pub(crate) unsafe fn guest_phys(ptr: *const u8, len: usize) -> Result<u64> {
    if len == 0 {
        return Err(EINVAL);
    }
    // CAST: the address of the memory, for page arithmetic.
    let start = ptr as usize;
    let end = start.checked_add(len).ok_or(EINVAL)?;
    // SAFETY: `ptr` is mapped kernel memory (caller's guarantee); `slow_virt_to_phys()` only
    // walks the page tables for it.
    let first = unsafe { bindings::slow_virt_to_phys(ptr.cast_mut().cast::<c_void>()) };
    // Every further page must follow the first one physically.
    let mut page = (start & !(PAGE_SIZE - 1)) + PAGE_SIZE;
    while page < end {
        // CAST: `page - start < len`, far below 2^64.
        let want = first.checked_add((page - start) as u64).ok_or(EINVAL)?;
        // CAST: back to the address of a byte of the caller's memory.
        let at = page as *mut c_void;
        // SAFETY: `page` lies inside the caller's mapped range (`start < page < end`).
        let phys = unsafe { bindings::slow_virt_to_phys(at) };
        if phys != want {
            return Err(EINVAL);
        }
        page += PAGE_SIZE;
    }
    Ok(first)
}

/// Coherent, physically contiguous memory shared with a legacy device, and its
/// guest-physical address (see the module documentation).
///
/// # Invariants
///
/// `addr` is the guest-physical address of the first byte of `mem`, whose bytes are
/// physically contiguous.
pub(crate) struct LegacyBuf<T: AsBytes + FromBytes> {
    mem: Coherent<[T]>,
    addr: u64,
}

impl<T: AsBytes + FromBytes> LegacyBuf<T> {
    /// Allocates `len` zeroed elements for `dev`'s device.
    ///
    /// # Errors
    ///
    /// `ENOMEM`; `EINVAL` for `len == 0` or if the memory came back not physically contiguous.
    pub(crate) fn zeroed_slice(
        dev: &device::Device<Bound>,
        len: usize,
        gfp: kernel::alloc::Flags,
    ) -> Result<Self> {
        let mem = Coherent::<T>::zeroed_slice_with_attrs(dev, len, gfp, DMA_ATTR_FORCE_CONTIGUOUS)?;
        // SAFETY: The CPU mapping of the allocation, alive as long as `mem`, `size()` bytes.
        let addr = unsafe { guest_phys(mem.as_ptr().cast::<u8>(), mem.size()) }?;
        // INVARIANT: `guest_phys` checked the contiguity and gave the first byte's address.
        Ok(Self { mem, addr })
    }

    /// The address a legacy device uses for the first element: guest-physical.
    pub(crate) fn device_addr(&self) -> u64 {
        self.addr
    }
}

impl<T: AsBytes + FromBytes> Deref for LegacyBuf<T> {
    type Target = Coherent<[T]>;

    fn deref(&self) -> &Coherent<[T]> {
        &self.mem
    }
}
