// SPDX-License-Identifier: GPL-2.0

//! Numeric test switches in debugfs, for the fault injection of the test flavour
//! (`virtio_pci_rs/testing.rs`, `virtio_balloon_rs/testing.rs`): a decimal number a test
//! writes and reads back, and countdowns that fail the next `N` attempts of something.
//! Compiled only into the test flavour (`--cfg virtio_rs_kunit`).
//!
//! No `unsafe`.

use kernel::{
    debugfs, fmt,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    uaccess::UserSliceReader,
};

/// A read-write file over one numeric switch.
pub(crate) type Switch = Pin<KBox<debugfs::File<&'static Atomic<u32>>>>;

/// A read-only file showing one number.
pub(crate) type Counter = Pin<KBox<debugfs::File<&'static Atomic<u32>>>>;

/// Creates the switch `name` in `dir` over `v`.
///
/// # Errors
///
/// `ENOMEM`.
pub(crate) fn switch(
    dir: &debugfs::Dir,
    name: &'static CStr,
    v: &'static Atomic<u32>,
) -> Result<Switch> {
    KBox::pin_init(
        dir.read_write_callback_file(name, Ok::<_, Error>(v), &show, &store),
        GFP_KERNEL,
    )
}

/// Creates the read-only file `name` in `dir` showing `v`.
///
/// # Errors
///
/// `ENOMEM`.
pub(crate) fn counter(
    dir: &debugfs::Dir,
    name: &'static CStr,
    v: &'static Atomic<u32>,
) -> Result<Counter> {
    KBox::pin_init(
        dir.read_callback_file(name, Ok::<_, Error>(v), &show),
        GFP_KERNEL,
    )
}

/// Whether a countdown switch is on; counts it down if so (the next `N` calls say yes).
pub(crate) fn count_down(v: &Atomic<u32>) -> bool {
    let mut left = v.load(Relaxed);
    while left != 0 {
        match v.cmpxchg(left, left - 1, Relaxed) {
            Ok(_) => return true,
            Err(now) => left = now,
        }
    }
    false
}

/// Shows a numeric switch.
fn show(v: &&'static Atomic<u32>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", v.load(Relaxed))
}

/// Sets a numeric switch from what user space wrote (a decimal number).
fn store(v: &&'static Atomic<u32>, reader: &mut UserSliceReader) -> Result {
    let mut buf = [0u8; 12];
    let n = reader.len();
    let buf = buf.get_mut(..n).ok_or(EINVAL)?;
    reader.read_slice(buf)?;
    let text = core::str::from_utf8(buf).map_err(|_| EINVAL)?.trim();
    let val = text.parse::<u32>().map_err(|_| EINVAL)?;
    v.store(val, Relaxed);
    Ok(())
}
