// SPDX-License-Identifier: GPL-2.0

//! A small safe wrapper of the kernel's hardware random number generator framework
//! (`include/linux/hw_random.h`, `drivers/char/hw_random/core.c`), which `kernel::bindings`
//! does not cover: the one file of `virtio_rng_rs` with `unsafe` code.
//!
//! A [`Registration`] registers a [`Source`] under a name with `hwrng_register()` and
//! unregisters it when dropped; `hwrng_unregister()` returns only when no read is running
//! (the core holds a reference on the rng across each read and waits for it), so the source
//! outlives every call into it.

use kernel::{
    bindings,
    ffi::{
        c_char,
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
    str::CString,
    types::Opaque, //
};

/// `struct hwrng` of `include/linux/hw_random.h` (Linux 7.2), field for field.
///
/// The private tail (`list` to `dying`) uses the kernel's own types from `bindings`, so its
/// size follows the kernel configuration (lockdep changes `struct completion`).
#[repr(C)]
struct RawHwrng {
    name: *const c_char,
    init: Option<unsafe extern "C" fn(rng: *mut RawHwrng) -> c_int>,
    cleanup: Option<unsafe extern "C" fn(rng: *mut RawHwrng)>,
    data_present: Option<unsafe extern "C" fn(rng: *mut RawHwrng, wait: c_int) -> c_int>,
    data_read: Option<unsafe extern "C" fn(rng: *mut RawHwrng, data: *mut u32) -> c_int>,
    read: Option<
        unsafe extern "C" fn(
            rng: *mut RawHwrng,
            data: *mut c_void,
            max: usize,
            wait: bool,
        ) -> c_int,
    >,
    priv_: c_ulong,
    quality: u16,
    list: bindings::list_head,
    ref_: bindings::kref,
    cleanup_work: bindings::work_struct,
    cleanup_done: bindings::completion,
    dying: bindings::completion,
}

extern "C" {
    /// `hwrng_register()`: 0 or a negative errno (`EEXIST` for a name in use).
    fn hwrng_register(rng: *mut RawHwrng) -> c_int;
    /// `hwrng_unregister()`: returns once no read of `rng` runs any more.
    fn hwrng_unregister(rng: *mut RawHwrng);
}

/// What a registered rng reads from.
pub(crate) trait Source: Send + Sync {
    /// Fills the start of `buf` with random bytes and returns how many; with `wait` false
    /// it must not sleep for the device (0 bytes is then a valid answer).
    ///
    /// # Errors
    ///
    /// Any errno, passed on to the reader of `/dev/hwrng`.
    fn read(&self, buf: &mut [u8], wait: bool) -> Result<usize>;
}

/// A registered hardware rng.
///
/// # Invariants
///
/// `rng` (at offset 0: the structure is `#[repr(C)]`) is registered with the hw_random core
/// from the end of [`Registration::new`] until the drop, and its `name` points into `name`.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub(crate) struct Registration<T: Source> {
    #[pin]
    rng: Opaque<RawHwrng>,
    name: CString,
    source: T,
}

// SAFETY: The C structure is only touched by the hw_random core under its own locks; the
// source is `Send`.
unsafe impl<T: Source> Send for Registration<T> {}
// SAFETY: Reads may run on any thread; the source is `Sync`.
unsafe impl<T: Source> Sync for Registration<T> {}

impl<T: Source> Registration<T> {
    /// Registers `source` as the hardware rng `name` (what `rng_available` lists).
    ///
    /// # Errors
    ///
    /// `EEXIST` if an rng of that name is registered, or what `hwrng_register()` returns.
    pub(crate) fn new(name: CString, source: T) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            name,
            source,
            // Last: registering publishes the structure, which must be complete by then.
            rng <- Opaque::try_ffi_init(move |slot: *mut RawHwrng| {
                // SAFETY:
                // - `slot` is the `rng` field of the structure being initialized, valid for
                //   writes; `RawHwrng` is plain data for which all zeroes is a valid value
                //   (null pointers, `None`, zero counters), as `hwrng_register()` expects for
                //   the private fields it initializes itself.
                unsafe { core::ptr::write_bytes(slot, 0, 1) };
                // `rng` is at offset 0 (`#[repr(C)]`, first field), so the structure starts
                // at `slot`; the fields initialized above (`name`) are already in place.
                let this = slot.cast::<Self>();
                // SAFETY:
                // - `this` points to the structure being initialized, whose `name` field was
                //   initialized before this closure runs (field order of the initializer).
                // - The string lives in the structure, which is pinned: the pointer stays
                //   valid until the drop, which unregisters first.
                let name_ptr = unsafe { (*this).name.as_char_ptr() };
                // SAFETY: `slot` is valid for writes (as above).
                unsafe {
                    (*slot).name = name_ptr;
                    (*slot).read = Some(read_trampoline::<T>);
                }
                // SAFETY:
                // - `slot` is a complete `struct hwrng` with a name and a `read` callback.
                // - It is pinned, and stays registered only until the drop unregisters it.
                // - The `read` callback's context (`source`) was initialized before.
                kernel::error::to_result(unsafe { hwrng_register(slot) })
            }),
        })
    }
}

#[pinned_drop]
impl<T: Source> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `rng` is registered (type invariant); `hwrng_unregister()` waits until no
        // read runs, so `source` outlives every call into it.
        unsafe { hwrng_unregister(self.rng.get()) };
    }
}

/// The `read` callback of `struct hwrng` for a [`Registration<T>`].
///
/// # Safety
///
/// `rng` must be the `rng` field of a registered `Registration<T>`, and `data` valid for
/// writes of `max` bytes not accessed by anyone else during the call.
unsafe extern "C" fn read_trampoline<T: Source>(
    rng: *mut RawHwrng,
    data: *mut c_void,
    max: usize,
    wait: bool,
) -> c_int {
    // SAFETY:
    // - `rng` is at offset 0 of a `Registration<T>` (`#[repr(C)]`, first field) that is
    //   registered, so alive: unregistering waits for running reads (caller's guarantee).
    // - Only shared references to it exist while it is registered.
    let this = unsafe { &*rng.cast::<Registration<T>>() };
    // SAFETY: `data` is valid for writes of `max` bytes (caller's guarantee); the core's
    // buffer may be uninitialized, so it is zeroed before a slice is made of it.
    let buf = unsafe {
        core::ptr::write_bytes(data.cast::<u8>(), 0, max);
        core::slice::from_raw_parts_mut(data.cast::<u8>(), max)
    };
    match this.source.read(buf, wait) {
        // The core passes small buffers (at least 32 bytes, a cache line); a count that does
        // not fit an int is clamped to what fits, which is still within `buf`.
        Ok(n) => c_int::try_from(n.min(max)).unwrap_or(c_int::MAX),
        Err(e) => e.to_errno(),
    }
}
