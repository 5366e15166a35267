// SPDX-License-Identifier: GPL-2.0

//! The balloon device's feature bits, configuration layout and queue slots, the features
//! the driver asks for, and the reads and writes of the device's configuration.
//!
//! No `unsafe`.

use crate::{abi::virtio::ConfigField, mm::PAGES_PER_PAGE, shared::BalloonShared};
use core::num::NonZeroUsize;
use kernel::{prelude::*, sync::atomic::Relaxed};

/// Feature: the host must be told before a deflated page is used (virtio 0.9.5 appendix G).
pub(crate) const F_MUST_TELL_HOST: u32 = 0;
/// Feature: the device has a statistics queue.
pub(crate) const F_STATS_VQ: u32 = 1;
/// Feature: deflate when the guest runs out of memory.
pub(crate) const F_DEFLATE_ON_OOM: u32 = 2;
/// Feature: free page hinting for live migration (`hinting.rs`; QEMU adds its queue before
/// the reporting queue when it offers this).
pub(crate) const F_FREE_PAGE_HINT: u32 = 3;
/// Feature: the device is told what freed guest pages hold (`poison_val`).
pub(crate) const F_PAGE_POISON: u32 = 4;
/// Feature: the device takes reports of free guest memory on the reporting queue.
pub(crate) const F_REPORTING: u32 = 5;

/// Ring feature: notifications suppressed by ring index (`VIRTIO_RING_F_EVENT_IDX`), which
/// the C driver negotiates too.  Not `INDIRECT_DESC`: every message is one element.
const F_RING_EVENT_IDX: u32 = 29;

/// Features this driver always asks for; [`driver_features`] adds PAGE_POISON when the guest
/// needs it.
const DRIVER_FEATURES: u64 = (1 << F_MUST_TELL_HOST)
    | (1 << F_STATS_VQ)
    | (1 << F_DEFLATE_ON_OOM)
    | (1 << F_FREE_PAGE_HINT)
    | (1 << F_REPORTING)
    | (1 << F_RING_EVENT_IDX);

/// The features to ask a device offering `host` for, given what the guest writes into the
/// pages it frees (`poison`, see [`mm::free_page_poison`](crate::mm::free_page_poison)); as
/// `virtballoon_validate()`:
///
/// - PAGE_POISON only when freed pages hold a known value (zeroed or poisoned);
/// - then REPORTING only if the device takes PAGE_POISON: a device that does not know the
///   value could hand back reported pages with other contents, which the guest would take
///   for corruption (poison checks) or use as if zeroed.
pub(crate) fn driver_features(host: u64, poison: Option<u32>) -> u64 {
    let mut want = DRIVER_FEATURES;
    if poison.is_some() {
        want |= 1 << F_PAGE_POISON;
        if host & (1 << F_PAGE_POISON) == 0 {
            want &= !(1 << F_REPORTING);
        }
    }
    want
}

/// Index of the reporting queue on a device offering `host`.  QEMU creates the queues in the
/// order inflate, deflate, stats (always), free page hinting (if it offers FREE_PAGE_HINT),
/// reporting, and a legacy device numbers them consecutively, whatever the driver accepts.
pub(crate) fn reporting_queue_index(host: u64) -> u16 {
    if host & (1 << F_FREE_PAGE_HINT) != 0 {
        4
    } else {
        3
    }
}

/// Configuration field `num_pages`, the size the device wants (LE, 4 KiB pages).
pub(crate) const CONFIG_NUM_PAGES: ConfigField<u32> = ConfigField::new(0);
/// Configuration field `actual`, the size the driver reached (LE, 4 KiB pages).
pub(crate) const CONFIG_ACTUAL: ConfigField<u32> = ConfigField::new(4);
/// Configuration field `free_page_hint_cmd_id`, the device's hinting command (LE, read-only
/// for the driver; with FREE_PAGE_HINT, see `hinting.rs`).
pub(crate) const CONFIG_CMD_ID: ConfigField<u32> = ConfigField::new(8);
/// Configuration field `poison_val`, what freed guest pages hold (LE; with PAGE_POISON).
pub(crate) const CONFIG_POISON_VAL: ConfigField<u32> = ConfigField::new(12);

/// Request slot of the inflate queue (queue index 0).
pub(crate) const INFLATE: usize = 0;
/// Request slot of the deflate queue (queue index 1).
pub(crate) const DEFLATE: usize = 1;
/// Request slot of the statistics queue (queue index 2, present when the device offers
/// STATS_VQ: QEMU numbers queues by the features it offers).
pub(crate) const STATS: usize = 2;

/// Token of the statistics buffer.
pub(crate) const STATS_TOKEN: NonZeroUsize = NonZeroUsize::MIN;

/// Token of the report in flight (one at a time, on its own queue).
pub(crate) const REPORT_TOKEN: NonZeroUsize = NonZeroUsize::MIN;

/// No request slot (no reporting queue).
pub(crate) const NO_SLOT: usize = usize::MAX;

impl BalloonShared {
    pub(crate) fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// The balloon size the device asks for, in 4 KiB pages, rounded to whole guest pages.
    pub(crate) fn target(&self) -> Result<u32> {
        let num = self.vdev.read(CONFIG_NUM_PAGES)?;
        let num = num
            .checked_next_multiple_of(PAGES_PER_PAGE)
            .unwrap_or(u32::MAX);
        self.counters.target.store(num.into(), Relaxed);
        Ok(num)
    }

    /// Tells the device what freed guest pages hold (`poison_val`), in one 32-bit access,
    /// and keeps what it reads back for debugfs.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the device's configuration has no `poison_val`.
    pub(crate) fn write_poison(&self, val: u32) -> Result {
        self.vdev.write(CONFIG_POISON_VAL, val)?;
        let seen = self.vdev.read(CONFIG_POISON_VAL)?;
        self.counters.poison_val.store(seen.into(), Relaxed);
        Ok(())
    }

    pub(crate) fn write_actual(&self, num_pages: u32) {
        self.counters.actual.store(num_pages.into(), Relaxed);
        // One 32-bit access: QEMU acts on every configuration write.
        if let Err(e) = self.vdev.write(CONFIG_ACTUAL, num_pages) {
            dev_warn!(self.dev, "cannot write actual: {:?}\n", e);
        }
    }
}
