// SPDX-License-Identifier: GPL-2.0

//! Fault injection for the integration tests, compiled only into the test flavour of the
//! module (`--cfg virtio_rs_kunit`): the production `.ko` carries none of it.
//!
//! `/sys/kernel/debug/virtio_pci_rs/drop_kicks`: while it holds `1`, the transport drops
//! every queue notification (it tells the ring the kick went out, but never writes
//! `QUEUE_NOTIFY`), so the device never looks at new buffers: a device that stopped taking
//! buffers, as far as a driver can tell.  `dropped_kicks` counts the notifications dropped,
//! so that a test can check the switch really took effect.

use kernel::{
    debugfs,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    uaccess::UserSliceReader,
};

/// Non-zero: drop every queue notification.
static DROP_KICKS: Atomic<u32> = Atomic::new(0);

/// Notifications dropped so far.
static DROPPED_KICKS: Atomic<u64> = Atomic::new(0);

/// Whether the next notification must be dropped; counts it if so.
pub(crate) fn drop_kick() -> bool {
    if DROP_KICKS.load(Relaxed) == 0 {
        return false;
    }
    DROPPED_KICKS.add(1u64, Relaxed);
    true
}

/// Parses what user space wrote to `drop_kicks`: `0` or `1`.
fn write_drop_kicks((): &(), reader: &mut UserSliceReader) -> Result {
    let mut buf = [0u8; 8];
    let n = reader.len();
    let buf = buf.get_mut(..n).ok_or(EINVAL)?;
    reader.read_slice(buf)?;
    let val = match core::str::from_utf8(buf).map_err(|_| EINVAL)?.trim() {
        "0" => 0,
        "1" => 1,
        _ => return Err(EINVAL),
    };
    DROP_KICKS.store(val, Relaxed);
    Ok(())
}

/// The debugfs files of the test switches; removing them (dropping) also turns them off.
pub(crate) struct TestSwitches {
    _drop_kicks: Pin<KBox<debugfs::File<()>>>,
    _dropped: Pin<KBox<debugfs::File<()>>>,
    _dir: debugfs::Dir,
}

impl TestSwitches {
    /// Creates `/sys/kernel/debug/virtio_pci_rs/{drop_kicks,dropped_kicks}`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<Self> {
        let dir = debugfs::Dir::new(c"virtio_pci_rs");
        let drop_kicks = KBox::pin_init(
            dir.read_write_callback_file(
                c"drop_kicks",
                Ok::<_, Error>(()),
                &|(): &(), f: &mut kernel::fmt::Formatter<'_>| {
                    writeln!(f, "{}", DROP_KICKS.load(Relaxed))
                },
                &write_drop_kicks,
            ),
            GFP_KERNEL,
        )?;
        let dropped = KBox::pin_init(
            dir.read_callback_file(
                c"dropped_kicks",
                Ok::<_, Error>(()),
                &|(): &(), f: &mut kernel::fmt::Formatter<'_>| {
                    writeln!(f, "{}", DROPPED_KICKS.load(Relaxed))
                },
            ),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _drop_kicks: drop_kicks,
            _dropped: dropped,
            _dir: dir,
        })
    }
}

impl Drop for TestSwitches {
    fn drop(&mut self) {
        DROP_KICKS.store(0, Relaxed);
    }
}
