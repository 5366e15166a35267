// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver (legacy device, virtio device type 5).
//!
//! The Rust counterpart of `drivers/virtio/virtio_balloon.c`.  It binds to the auxiliary
//! device `virtio_pci_rs.balloon.<n>` that the virtio-rs legacy PCI transport creates for
//! QEMU's `-device virtio-balloon-pci,disable-modern=on`, and is autoloaded through that
//! device's modalias.
//!
//! The device asks for a balloon of `num_pages` 4 KiB pages; a worker moves the balloon toward
//! it in batches: it allocates guest pages and hands their frame numbers to the device on the
//! inflate queue, or takes pages back, tells the device on the deflate queue, and frees them.
//! After each batch it writes `actual`.  Unbinding deflates everything.
//!
//! With VIRTIO_BALLOON_F_REPORTING it also registers with the kernel's free page reporting,
//! and hands the host the free page blocks the core reports, on the reporting queue, so that
//! the host can reclaim the memory behind them.  VIRTIO_BALLOON_F_PAGE_POISON tells the host
//! what freed pages hold when the guest zeroes or poisons them (`virtballoon_validate()`).
//!
//! With VIRTIO_BALLOON_F_FREE_PAGE_HINT it answers the host's free page hinting commands
//! during a live migration (`hinting.rs`): it names blocks of free memory on the free page
//! queue so that the host need not send them, and gives them back when the host is done.
//!
//! The pages the device holds sit on the balloon core's list (`mm/migrate.rs`), where compaction
//! migrates them: the balloon moves to a new page by telling the device about the new page
//! (inflate), then the old one (deflate), as `virtballoon_migratepage()` does.
//!
//! Lock order: `BalloonShared::reporting` (held while unregistering, which waits for a report
//! in progress), then the page reporting core's `page_reporting_mutex`, then
//! `BalloonShared::state`, which every device access takes, then the balloon core's
//! `balloon_pages_lock` (taken inside the core's list functions); `BalloonShared::hooks` is
//! never held with another.  The interrupt callbacks take none: they queue work.  The
//! migration callback only tries the state lock: compaction may run inside an allocation the
//! worker makes.
//!
//! The driver is written on the virtio-rs driver API (`common/virtio.rs`): no `unsafe` here.
//! The crate's `unsafe` is only in its memory-management glue over C interfaces that have no
//! Rust abstraction in 7.2: `mm.rs` (page allocation, frame numbers, memory counters) with
//! its submodules `mm/migrate.rs` (the balloon core's page list, migration) and
//! `mm/reporting.rs` (free page reporting), and `pressure.rs` (OOM notifier, shrinker).  The
//! workqueue glue it uses is in the shared contract (`common/workqueue.rs`).

use kernel::{
    debugfs, new_condvar, new_mutex, new_work,
    prelude::*,
    str::CString,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        ArcBorrow, //
    },
    workqueue,
};

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_balloon_rs/callbacks.rs"]
mod callbacks;

#[path = "virtio_balloon_rs/config.rs"]
mod config;

#[path = "virtio_balloon_rs/device.rs"]
mod device;

#[path = "virtio_balloon_rs/engine.rs"]
mod engine;

#[path = "virtio_balloon_rs/hinting.rs"]
mod hinting;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_balloon_rs/kunit.rs"]
mod kunit;

#[path = "virtio_balloon_rs/mm.rs"]
mod mm;
// The page list (and migration) and page reporting are memory-management glue, in `mm/`.
use mm::{
    migrate,
    reporting, //
};

#[path = "virtio_balloon_rs/pressure.rs"]
mod pressure;

#[path = "virtio_balloon_rs/probe.rs"]
mod probe;

#[path = "virtio_balloon_rs/shared.rs"]
mod shared;

#[path = "virtio_balloon_rs/stats.rs"]
mod stats;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_balloon_rs/testing.rs"]
mod testing;

#[path = "virtio_balloon_rs/wait.rs"]
mod wait;

#[path = "virtio_balloon_rs/worker.rs"]
mod worker;

#[path = "virtio_balloon_rs/wq.rs"]
mod wq;

use crate::{
    abi::virtio::{
        self,
        Device,
        QueueInfo, //
    },
    config::{
        driver_features,
        reporting_queue_index,
        F_DEFLATE_ON_OOM,
        F_FREE_PAGE_HINT,
        F_PAGE_POISON,
        F_REPORTING,
        F_STATS_VQ,
        NO_SLOT, //
    },
    device::DeviceHost,
    engine::Engine,
    hinting::{
        HintPool,
        HintQueue, //
    },
    migrate::{
        BalloonList,
        ListRef, //
    },
    shared::{
        BalloonShared,
        State, //
    },
    stats::{
        Counters,
        CountersFile, //
    },
};

/// Per-device driver data.
///
/// Drop order (field order): the debugfs files go first; the shared state last.
struct Balloon {
    _status: CountersFile,
    _stats: CountersFile,
    _dir: debugfs::Dir,
    shared: Arc<BalloonShared>,
}

/// The balloon driver.
pub(crate) struct BalloonDriver;

impl virtio::Driver for BalloonDriver {
    const ID_TABLE: &'static [virtio::DeviceId] = &[virtio::DeviceId::new(abi::VIRTIO_ID_BALLOON)];

    type Data = Balloon;
    type Shared = BalloonShared;

    fn validate(dev: &kernel::device::Device) -> Result {
        Self::check_parameters(dev)
    }

    fn features(offered: u64) -> u64 {
        driver_features(offered, mm::free_page_poison())
    }

    fn probe(adev: &Device<'_>) -> Result<Balloon> {
        let msg_pages = *module_parameters::msg_pages.value();
        let in_flight = *module_parameters::msgs_in_flight.value();
        let poison = mm::free_page_poison();
        let features = adev.features();
        let host_features = adev.offered_features();
        let parent = adev.dma_device();
        // A legacy device gets guest-physical addresses, never DMA handles.
        let pfns = abi::LegacyBuf::<u32>::zeroed_slice(
            parent,
            engine::SLOTS * engine::MSG_PFNS,
            GFP_KERNEL,
        )?;
        let stats_buf = abi::LegacyBuf::<u8>::zeroed_slice(parent, stats::BUF_SIZE, GFP_KERNEL)?;
        let counters = Arc::new(Counters::new(), GFP_KERNEL)?;
        let engine = Engine::with_limits(
            DeviceHost {
                vqs: None,
                pfns,
                list: None,
                counters: counters.clone(),
            },
            // CAST: `validate` checked them to be at most `MSG_PAGES` and `SLOTS`.
            msg_pages as usize,
            // CAST: as above.
            in_flight as usize,
        )?;
        counters.features.store(features, Relaxed);

        // The debugfs files first: every later failure must undo what touched the device.
        let name = CString::try_from_fmt(fmt!("balloon.{}", adev.id()))?;
        let dir = debugfs::Dir::new(c"virtio_balloon_rs").subdir(&name);
        let status = Counters::file(&counters, &dir, c"status", &|c, f| c.show_status(f))?;
        let stats_file = Counters::file(&counters, &dir, c"stats", &|c, f| c.show_stats(f))?;

        // Queue indexes follow what the device offers: QEMU has the stats queue at 2 whether
        // or not the driver uses it, and the reporting queue after the free page queue.
        let stats_offered = host_features & (1 << F_STATS_VQ) != 0;
        let mut queues = KVec::with_capacity(4, GFP_KERNEL)?;
        queues.extend_from_slice(&[QueueInfo::new(0), QueueInfo::new(1)], GFP_KERNEL)?;
        if stats_offered && features & (1 << F_STATS_VQ) != 0 {
            queues.push(QueueInfo::new(2), GFP_KERNEL)?;
        }
        let hint_setup = if features & (1 << F_FREE_PAGE_HINT) != 0 {
            let ids = abi::LegacyBuf::<u32>::zeroed_slice(parent, 2, GFP_KERNEL)?;
            // CAST: `PAGE_SIZE` fits in 64 bits.
            let total = mm::MemSnapshot::now()?.total / kernel::page::PAGE_SIZE as u64;
            let pool = HintPool::new(ids, total, counters.clone(), ARef::from(adev.as_ref()))?;
            queues.push(QueueInfo::new(hinting::QUEUE_INDEX), GFP_KERNEL)?;
            Some((pool, queues.len() - 1))
        } else {
            None
        };
        let report_slot = if features & (1 << F_REPORTING) != 0 {
            queues.push(
                QueueInfo::new(reporting_queue_index(host_features)),
                GFP_KERNEL,
            )?;
            queues.len() - 1
        } else {
            NO_SLOT
        };
        let shared_counters = counters.clone();
        let adjust_managed = features & (1 << F_DEFLATE_ON_OOM) == 0;
        let shared = Arc::pin_init(
            pin_init!(BalloonShared {
                state <- new_mutex!(State {
                    engine,
                    stats_buf,
                    ack_pending: false,
                    inflate_lost: false,
                    deflate_lost: false,
                    report_lost: false,
                    silent_waits: 0,
                    answers: 0,
                    slow_logged: false,
                }),
                acked <- new_condvar!(),
                update <- new_work!("virtio_balloon_rs::update"),
                ack <- new_work!("virtio_balloon_rs::ack"),
                stats <- new_work!("virtio_balloon_rs::stats"),
                hint_work <- new_work!("virtio_balloon_rs::hint"),
                hint: hint_setup.as_ref().map(|(pool, _)| pool.clone()),
                hint_slot: hint_setup.as_ref().map_or(NO_SLOT, |(_, slot)| *slot),
                hooks <- new_mutex!(None),
                reporting <- new_mutex!(None),
                report_slot,
                stop: Atomic::new(false),
                pressure_hold: Atomic::new(false),
                backoff_ms: Atomic::new(0),
                dead: Atomic::new(false),
                oom_pages: (*module_parameters::oom_pages.value()).into(),
                counters: shared_counters,
                features,
                vdev: adev.device_ref(),
                // Balloon pages leave the managed page counts unless the device deflates on
                // OOM (as C), across zones too when a page migrates: the driver counts them
                // once per message (`batch_accounting`), or the core once per page.
                list <- BalloonList::new::<BalloonShared>(
                    adjust_managed,
                    *module_parameters::batch_accounting.value() != 0,
                ),
                dev: ARef::from(adev.as_ref()),
            }),
            GFP_KERNEL,
        )?;
        let vqs = adev
            .find_vqs::<Self>(&queues, shared.clone())
            .inspect_err(|e| {
                dev_err!(adev, "cannot set up the queues: {:?}\n", e);
                adev.fail();
            })?;
        {
            let mut state = shared.state.lock();
            state.engine.host.list = Some(ListRef::new(&shared));
            state.engine.host.vqs = Some(vqs);
        }
        // Hinting needs a descriptor for a block besides the one kept for the stop id
        // (`virtballoon_probe()`); it polls the queue, so no interrupts there.
        let hint_room = shared.with_hint_vq(|vq| {
            vq.disable_cb();
            vq.num_free()
        });
        if hint_room.is_some_and(|n| n < 2) {
            dev_err!(adev, "the free page queue is too small\n");
            Self::teardown(&shared, false);
            return Err(ENOSPC);
        }
        if shared.has(F_PAGE_POISON) {
            if let Err(e) = shared.write_poison(poison.unwrap_or(0)) {
                dev_err!(adev, "cannot tell the device the poison value: {:?}\n", e);
                Self::teardown(&shared, false);
                return Err(e);
            }
        }
        adev.ready();
        if shared.has(F_STATS_VQ) {
            shared.send_stats(true);
        }
        let hooks = Self::pressure_hooks(&shared).and_then(|hooks| {
            *shared.hooks.lock() = Some(hooks);
            Self::register_reporting(&shared)
        });
        if let Err(e) = hooks {
            Self::teardown(&shared, false);
            return Err(e);
        }

        dev_info!(
            adev,
            "balloon ready (device features {:#010x}, negotiated {:#x})\n",
            host_features,
            features
        );
        // Move toward the current target right away, and serve a hinting command the device
        // may have asked for before the driver came.
        let _ = workqueue::system_freezable().enqueue::<Arc<BalloonShared>, 0>(shared.clone());
        if shared.hint.is_some() {
            shared.as_arc_borrow().queue_hint_work();
        }
        Ok(Balloon {
            _status: status,
            _stats: stats_file,
            _dir: dir,
            shared,
        })
    }

    fn remove(adev: &Device<'_>, this: &Balloon) {
        // Quiesce (as `virtballoon_quiesce()`), deflate, reset, delete the queues.
        Self::teardown(&this.shared, true);
        dev_info!(adev, "balloon removed, all pages returned\n");
    }

    fn vq_callback(shared: ArcBorrow<'_, BalloonShared>, queue: usize) {
        BalloonShared::vq_interrupt(shared, queue)
    }

    fn config_changed(shared: ArcBorrow<'_, BalloonShared>) {
        BalloonShared::config_changed(shared)
    }
}

virtio::module_virtio_driver! {
    driver: BalloonDriver,
    globals: wq::BalloonModule,
    name: "virtio_balloon_rs",
    authors: ["The virtio-rs developers"],
    description: "Virtio memory balloon driver for the virtio-rs legacy transport (Rust)",
    license: "GPL",
    imports_ns: ["VIRTIO_RS"],
    params: {
        oom_pages: u32 {
            default: 256,
            description: "Pages to give back each time the OOM notifier runs",
        },
        msg_pages: u32 {
            default: 4096,
            description: "Guest pages per inflate/deflate message, 1-4096 (the C driver: 256)",
        },
        msgs_in_flight: u32 {
            default: 4,
            description: "Inflate/deflate messages in flight at most, 1-4 (the C driver: 1)",
        },
        block_alloc: u32 {
            default: 0,
            description: "1: inflate with whole free 2 MiB blocks, split into pages, before order-0 pages (0: order-0 pages only)",
        },
        batch_accounting: u32 {
            default: 1,
            description: "Adjust the managed page counts once per zone and message (0: once per page, by the balloon core)",
        },
        deflate_policy: u32 {
            default: 0,
            description: "Deflate under pressure: 0 auto (OOM notifier if DEFLATE_ON_OOM), 1 oom, 2 shrinker, 3 both, 4 none",
        },
    },
}
