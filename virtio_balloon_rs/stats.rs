// SPDX-License-Identifier: GPL-2.0

//! The balloon's counters (shown in debugfs) and the statistics the device asks for on the
//! stats queue (virtio 1.x section 5.5.6.3; `docs/interop/virtio-balloon-stats.rst` in QEMU):
//! their wire format, and sending them each time the device returns the buffer.
//!
//! No `unsafe`.

use crate::{
    abi::Sg,
    config::{
        STATS,
        STATS_TOKEN, //
    },
    mm::MemSnapshot,
    shared::BalloonShared,
};
use kernel::{
    debugfs,
    dma::Coherent,
    fmt,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
    },
    time::{
        Instant,
        Monotonic, //
    },
};

/// A debugfs file that shows the counters.
pub(crate) type CountersFile = Pin<KBox<debugfs::File<Arc<Counters>>>>;

/// Number of statistics tags (`VIRTIO_BALLOON_S_NR`).
pub(crate) const NR_TAGS: usize = 16;

/// Bytes of one statistics entry: `{ u16 tag; u64 val }`, packed.
pub(crate) const ENTRY_SIZE: usize = 10;

/// Bytes of the statistics buffer.
pub(crate) const BUF_SIZE: usize = NR_TAGS * ENTRY_SIZE;

/// Names of the tags, as QEMU's `guest-stats` reports them (index = tag).
const TAG_NAMES: [&str; NR_TAGS] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "htlb_pgalloc",
    "htlb_pgfail",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];

/// The values of every tag, in tag order (all of them are computable on this kernel).
pub(crate) fn tag_values(m: &MemSnapshot) -> [u64; NR_TAGS] {
    [
        m.swap_in,
        m.swap_out,
        m.major_faults,
        m.minor_faults,
        m.free,
        m.total,
        m.available,
        m.caches,
        m.htlb_alloc,
        m.htlb_fail,
        m.oom_kills,
        m.alloc_stalls,
        m.async_scan,
        m.direct_scan,
        m.async_reclaim,
        m.direct_reclaim,
    ]
}

/// Encodes `values` as the packed entries the device parses (guest endian, i.e. LE here).
pub(crate) fn encode(values: &[u64; NR_TAGS]) -> [u8; BUF_SIZE] {
    let mut buf = [0u8; BUF_SIZE];
    for ((tag, val), entry) in values
        .iter()
        .enumerate()
        .zip(buf.chunks_exact_mut(ENTRY_SIZE))
    {
        let (t, v) = entry.split_at_mut(2);
        // CAST: tags are below 16.
        t.copy_from_slice(&(tag as u16).to_le_bytes());
        v.copy_from_slice(&val.to_le_bytes());
    }
    buf
}

/// What the driver did, for debugfs; every field is updated with relaxed atomics.
pub(crate) struct Counters {
    /// The device's target, in 4 KiB pages.
    pub(crate) target: Atomic<u64>,
    /// The last `actual` written, in 4 KiB pages.
    pub(crate) actual: Atomic<u64>,
    /// Guest pages in the balloon.
    pub(crate) pages_held: Atomic<u64>,
    /// 4 KiB pages inflated since probe.
    pub(crate) inflated: Atomic<u64>,
    /// 4 KiB pages deflated since probe (all causes).
    pub(crate) deflated: Atomic<u64>,
    /// 4 KiB pages deflated by the OOM notifier.
    pub(crate) oom_deflated: Atomic<u64>,
    /// 4 KiB pages deflated by the shrinker.
    pub(crate) shrinker_deflated: Atomic<u64>,
    /// Calls of the shrinker or the OOM notifier that gave nothing back because the balloon
    /// stayed busy for [`PRESSURE_LOCK_MS`](crate::callbacks::PRESSURE_LOCK_MS).
    pub(crate) pressure_busy: Atomic<u64>,
    /// Page allocations that failed while inflating.
    pub(crate) alloc_failures: Atomic<u64>,
    /// Messages the device did not take (broken queue, timeout).
    pub(crate) device_errors: Atomic<u64>,
    /// Waits that found the device silent for the whole acknowledgement timeout.
    pub(crate) ack_timeouts: Atomic<u64>,
    /// Guest pages given back unballooned: their frame numbers do not fit the 32 bits a
    /// legacy device takes (memory above 16 TiB).
    pub(crate) unaddressable: Atomic<u64>,
    /// Statistics the driver could not read (an allocation failed): the device got the
    /// previous ones again.
    pub(crate) stats_failures: Atomic<u64>,
    /// Guest pages of inflate messages lost on a broken queue, held until unbind.
    pub(crate) set_aside: Atomic<u64>,
    /// Negotiated feature bits.
    pub(crate) features: Atomic<u64>,
    /// Statistics buffers sent.
    pub(crate) stats_sent: Atomic<u64>,
    /// The last statistics sent, by tag.
    pub(crate) last_stats: [Atomic<u64>; NR_TAGS],
    /// Inflate and deflate messages posted.
    pub(crate) messages: Atomic<u64>,
    /// Time spent allocating pages to inflate, in ns.
    pub(crate) alloc_ns: Atomic<u64>,
    /// Time spent posting messages (describing the pages, adding the buffer, notifying the
    /// device), in ns.  Under QEMU's TCG the notification runs the device's handler, so its
    /// per-page work lands here.
    pub(crate) post_ns: Atomic<u64>,
    /// Time spent asleep waiting for the device, in ns.
    pub(crate) wait_ns: Atomic<u64>,
    /// Time spent releasing deflated pages to the guest, in ns.
    pub(crate) release_ns: Atomic<u64>,
    /// Time spent putting pages on the balloon core's list and taking them off it, with the
    /// managed page counts, in ns (taking them off is part of posting a deflate message).
    pub(crate) list_ns: Atomic<u64>,
    /// Balloon pages compaction migrated (the device was told about both pages).
    pub(crate) migrated: Atomic<u64>,
    /// Migrations the balloon refused or could not finish.
    pub(crate) migrate_failures: Atomic<u64>,
    /// Free page reports the device took back.
    pub(crate) reports: Atomic<u64>,
    /// Bytes of free memory reported to the device (in the reports it took back).
    pub(crate) reported_bytes: Atomic<u64>,
    /// Reports that failed (not posted, broken queue, or not returned in time).
    pub(crate) report_errors: Atomic<u64>,
    /// Time spent in the page reporting callback (posting, waiting), in ns.
    pub(crate) report_ns: Atomic<u64>,
    /// `poison_val` as read back from the device after writing it (0 when PAGE_POISON was
    /// not negotiated and nothing was written).
    pub(crate) poison_val: Atomic<u64>,
    /// The free page hinting command id last read from the device.
    pub(crate) hint_cmd_id: Atomic<u64>,
    /// Free page hinting commands served (runs).
    pub(crate) hint_runs: Atomic<u64>,
    /// 4 KiB pages hinted to the device since probe.
    pub(crate) hinted: Atomic<u64>,
    /// 4 KiB pages hinted and not given back to the guest yet.
    pub(crate) hint_held: Atomic<u64>,
    /// Hinted 4 KiB pages given back when the device said DONE, or at unbind.
    pub(crate) hint_returned: Atomic<u64>,
    /// Hinted 4 KiB pages given back early, to reclaim (the shrinker).
    pub(crate) hint_shrunk: Atomic<u64>,
    /// Hinting runs that ended early, and free page queue failures.
    pub(crate) hint_errors: Atomic<u64>,
}

// Test flavour: counts the balloon states alive (every part of a balloon holds its counters).
#[cfg(virtio_rs_kunit)]
impl Drop for Counters {
    fn drop(&mut self) {
        crate::testing::live(&crate::testing::LIVE_BALLOONS, false);
    }
}

impl Counters {
    /// All zero.
    pub(crate) fn new() -> Self {
        #[cfg(virtio_rs_kunit)]
        crate::testing::live(&crate::testing::LIVE_BALLOONS, true);
        Self {
            target: Atomic::new(0),
            actual: Atomic::new(0),
            pages_held: Atomic::new(0),
            inflated: Atomic::new(0),
            deflated: Atomic::new(0),
            oom_deflated: Atomic::new(0),
            shrinker_deflated: Atomic::new(0),
            pressure_busy: Atomic::new(0),
            alloc_failures: Atomic::new(0),
            device_errors: Atomic::new(0),
            ack_timeouts: Atomic::new(0),
            unaddressable: Atomic::new(0),
            stats_failures: Atomic::new(0),
            set_aside: Atomic::new(0),
            features: Atomic::new(0),
            stats_sent: Atomic::new(0),
            last_stats: [const { Atomic::new(0) }; NR_TAGS],
            messages: Atomic::new(0),
            alloc_ns: Atomic::new(0),
            post_ns: Atomic::new(0),
            wait_ns: Atomic::new(0),
            release_ns: Atomic::new(0),
            list_ns: Atomic::new(0),
            migrated: Atomic::new(0),
            migrate_failures: Atomic::new(0),
            reports: Atomic::new(0),
            reported_bytes: Atomic::new(0),
            report_errors: Atomic::new(0),
            report_ns: Atomic::new(0),
            poison_val: Atomic::new(0),
            hint_cmd_id: Atomic::new(0),
            hint_runs: Atomic::new(0),
            hinted: Atomic::new(0),
            hint_held: Atomic::new(0),
            hint_returned: Atomic::new(0),
            hint_shrunk: Atomic::new(0),
            hint_errors: Atomic::new(0),
        }
    }

    /// Adds `n` to a counter.
    pub(crate) fn add(c: &Atomic<u64>, n: u64) {
        c.add(n, Relaxed);
    }

    /// Adds the time elapsed since `since` to a nanosecond counter.
    pub(crate) fn add_time(c: &Atomic<u64>, since: Instant<Monotonic>) {
        c.add(
            u64::try_from(since.elapsed().as_nanos()).unwrap_or(0),
            Relaxed,
        );
    }

    /// Creates the debugfs file `name` in `dir`, which shows `this` through `show`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn file<F>(
        this: &Arc<Self>,
        dir: &debugfs::Dir,
        name: &'static CStr,
        show: &'static F,
    ) -> Result<CountersFile>
    where
        F: Fn(&Arc<Self>, &mut fmt::Formatter<'_>) -> fmt::Result + Send + Sync,
    {
        KBox::pin_init(
            dir.read_callback_file(name, Ok::<_, Error>(this.clone()), show),
            GFP_KERNEL,
        )
    }

    /// The `status` debugfs file: one `name value` line per counter.
    pub(crate) fn show_status(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, &Atomic<u64>); 36] = [
            ("target_pages", &self.target),
            ("actual_pages", &self.actual),
            ("pages_held", &self.pages_held),
            ("inflated_pages", &self.inflated),
            ("deflated_pages", &self.deflated),
            ("oom_deflated_pages", &self.oom_deflated),
            ("shrinker_deflated_pages", &self.shrinker_deflated),
            ("pressure_busy", &self.pressure_busy),
            ("alloc_failures", &self.alloc_failures),
            ("device_errors", &self.device_errors),
            ("ack_timeouts", &self.ack_timeouts),
            ("unaddressable_pages", &self.unaddressable),
            ("stats_failures", &self.stats_failures),
            ("set_aside_pages", &self.set_aside),
            ("features", &self.features),
            ("stats_sent", &self.stats_sent),
            ("messages", &self.messages),
            ("alloc_ns", &self.alloc_ns),
            ("post_ns", &self.post_ns),
            ("wait_ns", &self.wait_ns),
            ("release_ns", &self.release_ns),
            ("list_ns", &self.list_ns),
            ("migrated_pages", &self.migrated),
            ("migrate_failures", &self.migrate_failures),
            ("reports", &self.reports),
            ("reported_bytes", &self.reported_bytes),
            ("report_errors", &self.report_errors),
            ("report_ns", &self.report_ns),
            ("poison_val", &self.poison_val),
            ("hint_cmd_id", &self.hint_cmd_id),
            ("hint_runs", &self.hint_runs),
            ("hinted_pages", &self.hinted),
            ("hint_held_pages", &self.hint_held),
            ("hint_returned_pages", &self.hint_returned),
            ("hint_shrunk_pages", &self.hint_shrunk),
            ("hint_errors", &self.hint_errors),
        ];
        for (name, v) in rows {
            writeln!(f, "{} {}", name, v.load(Relaxed))?;
        }
        Ok(())
    }

    /// The `stats` debugfs file: the last statistics sent, one `name value` line per tag.
    pub(crate) fn show_stats(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, v) in TAG_NAMES.iter().zip(&self.last_stats) {
            writeln!(f, "{} {}", name, v.load(Relaxed))?;
        }
        Ok(())
    }
}

impl BalloonShared {
    /// Sends fresh statistics: the first buffer at probe (`initial`), then each time the
    /// device returns the buffer (`stats_handle_request()` in C).  If they cannot be read (an
    /// allocation failed), the device gets the buffer back with the previous ones (all
    /// zero at probe), so that it asks again at its next interval: it would never ask again
    /// without the buffer.
    pub(crate) fn send_stats(&self, initial: bool) {
        // Read the counters before taking the lock: this allocates.
        let snapshot = MemSnapshot::now();
        // Test flavour: the read fails, as an allocation failure there would.
        #[cfg(virtio_rs_kunit)]
        let snapshot = if crate::testing::fail_stats() {
            Err(ENOMEM)
        } else {
            snapshot
        };
        let mut state = self.state.lock();
        let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(STATS)) else {
            return;
        };
        if !initial && vq.get_buf().is_none() {
            return;
        }
        let values = match snapshot {
            Ok(m) => Some(tag_values(&m)),
            Err(e) => {
                if self.counters.stats_failures.load(Relaxed) == 0 {
                    dev_warn!(
                        self.dev,
                        "cannot read memory statistics ({:?}): sending the previous ones (logged once)\n",
                        e
                    );
                }
                Counters::add(&self.counters.stats_failures, 1);
                None
            }
        };
        if let Some(values) = &values {
            let bytes = encode(values);
            for (i, b) in bytes.iter().enumerate() {
                if fill_byte(&state.stats_buf, i, *b).is_err() {
                    return;
                }
            }
        }
        let sg = Sg::new(state.stats_buf.device_addr(), BUF_SIZE as u32);
        let Some(vq) = state.engine.host.vqs.as_mut().and_then(|v| v.get(STATS)) else {
            return;
        };
        if let Err(e) = vq.add_outbuf(sg, STATS_TOKEN) {
            dev_warn!(self.dev, "cannot queue the statistics: {:?}\n", e);
            Counters::add(&self.counters.device_errors, 1);
            return;
        }
        vq.kick();
        if let Some(values) = values {
            for (slot, v) in self.counters.last_stats.iter().zip(values) {
                slot.store(v, Relaxed);
            }
        }
        Counters::add(&self.counters.stats_sent, 1);
    }
}

/// Writes byte `i` of a DMA buffer.
///
/// # Errors
///
/// `EINVAL` if `i` is out of bounds.
fn fill_byte(buf: &Coherent<[u8]>, i: usize, b: u8) -> Result {
    kernel::dma_write!(buf, [try: i], b);
    Ok(())
}
