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
//! The pages the device holds sit on the balloon core's list (`migrate.rs`), where compaction
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
//! `unsafe` here: one call, `DeviceHandle::find_vqs` (the queues must be deleted before the
//! handle goes away).  The crate's other `unsafe` is in the glue over C interfaces that have no
//! Rust abstraction in 7.2 (`mm.rs`, `migrate.rs`, `pressure.rs`, `reporting.rs`), in the
//! pointers into the pinned shared state (`shared.rs`, `device.rs`), in `worker.rs`
//! (`flush_work()`) and in the KUnit suites (`kunit.rs`).

use kernel::{
    auxiliary, debugfs,
    device::Core,
    new_condvar, new_mutex, new_work,
    prelude::*,
    str::CString,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc, //
    },
    workqueue,
};

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_balloon_rs/config.rs"]
mod config;

#[path = "virtio_balloon_rs/device.rs"]
mod device;

#[path = "virtio_balloon_rs/engine.rs"]
mod engine;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_balloon_rs/kunit.rs"]
mod kunit;

#[path = "virtio_balloon_rs/migrate.rs"]
mod migrate;

#[path = "virtio_balloon_rs/mm.rs"]
mod mm;

#[path = "virtio_balloon_rs/pressure.rs"]
mod pressure;

#[path = "virtio_balloon_rs/probe.rs"]
mod probe;

#[path = "virtio_balloon_rs/reporting.rs"]
mod reporting;

#[path = "virtio_balloon_rs/shared.rs"]
mod shared;

#[path = "virtio_balloon_rs/stats.rs"]
mod stats;

#[cfg(virtio_rs_kunit)]
#[path = "virtio_balloon_rs/testing.rs"]
mod testing;

#[path = "virtio_balloon_rs/worker.rs"]
mod worker;

#[path = "virtio_balloon_rs/wq.rs"]
mod wq;

use crate::{
    abi::DeviceHandle,
    config::{
        driver_features,
        reporting_queue_index,
        F_DEFLATE_ON_OOM,
        F_PAGE_POISON,
        F_REPORTING,
        F_STATS_VQ,
        NO_SLOT, //
    },
    device::{
        DeviceHost,
        ListRef, //
    },
    engine::{
        Engine,
        Host, //
    },
    migrate::BalloonList,
    shared::{
        BalloonShared,
        HandleRef,
        State, //
    },
    stats::Counters,
};

/// Per-device driver data.
///
/// Drop order (field order): the debugfs files go first; the shared state last.
struct Balloon {
    _status: Pin<KBox<debugfs::File<Arc<Counters>>>>,
    _stats: Pin<KBox<debugfs::File<Arc<Counters>>>>,
    _dir: debugfs::Dir,
    shared: Arc<BalloonShared>,
}

kernel::auxiliary_device_table!(
    AUX_TABLE,
    MODULE_AUX_TABLE,
    <BalloonDriver as auxiliary::Driver>::IdInfo,
    [(
        auxiliary::DeviceId::new(abi::TRANSPORT_MODNAME, c"balloon"),
        ()
    )]
);

/// The balloon driver.
struct BalloonDriver;

impl auxiliary::Driver for BalloonDriver {
    type IdInfo = ();
    type Data<'bound> = Balloon;

    const ID_TABLE: auxiliary::IdTable<Self::IdInfo> = &AUX_TABLE;

    fn probe<'bound>(
        adev: &'bound auxiliary::Device<Core<'_>>,
        _info: &'bound Self::IdInfo,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let handle = DeviceHandle::from_auxiliary(adev).inspect_err(|e| {
            dev_err!(
                adev,
                "no usable device handle from the transport ({:?})\n",
                e
            );
        })?;
        if handle.device_type != abi::VIRTIO_ID_BALLOON {
            dev_err!(adev, "not a balloon: device type {}\n", handle.device_type);
            return Err(ENODEV);
        }
        // Parameters first: nothing has touched the device yet.
        let policy = *module_parameters::deflate_policy.value();
        if policy > probe::policy::NONE {
            dev_err!(adev, "deflate_policy={} is not 0-4\n", policy);
            return Err(EINVAL);
        }
        let msg_pages = *module_parameters::msg_pages.value();
        let in_flight = *module_parameters::msgs_in_flight.value();
        if !(1..=<DeviceHost as Host>::MSG_PAGES).contains(&(msg_pages as usize))
            || !(1..=engine::SLOTS).contains(&(in_flight as usize))
        {
            dev_err!(
                adev,
                "msg_pages={} msgs_in_flight={}: expected 1-{} and 1-{}\n",
                msg_pages,
                in_flight,
                <DeviceHost as Host>::MSG_PAGES,
                engine::SLOTS
            );
            return Err(EINVAL);
        }
        let poison = mm::free_page_poison();
        let features = handle.finalize_features(driver_features(handle.host_features, poison));
        let parent = adev.parent();
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
            // CAST: checked above to be at most `MSG_PAGES` and `SLOTS`.
            msg_pages as usize,
            // CAST: as above.
            in_flight as usize,
        )?;
        counters.features.store(features, Relaxed);

        // The debugfs files first: every later failure must undo what touched the device.
        let name = CString::try_from_fmt(fmt!("balloon.{}", adev.id()))?;
        let dir = debugfs::Dir::new(c"virtio_balloon_rs").subdir(&name);
        let status = KBox::pin_init(
            dir.read_callback_file(
                c"status",
                Ok::<_, Error>(counters.clone()),
                &|c: &Arc<Counters>, f: &mut kernel::fmt::Formatter<'_>| c.show_status(f),
            ),
            GFP_KERNEL,
        )?;
        let stats_file = KBox::pin_init(
            dir.read_callback_file(
                c"stats",
                Ok::<_, Error>(counters.clone()),
                &|c: &Arc<Counters>, f: &mut kernel::fmt::Formatter<'_>| c.show_stats(f),
            ),
            GFP_KERNEL,
        )?;

        // Queue indexes follow what the device offers: QEMU has the stats queue at 2 whether
        // or not the driver uses it, and the reporting queue after the free page queue.
        let stats_offered = handle.host_features & (1 << F_STATS_VQ) != 0;
        let mut indexes = KVec::with_capacity(4, GFP_KERNEL)?;
        indexes.extend_from_slice(&[0, 1], GFP_KERNEL)?;
        if stats_offered && features & (1 << F_STATS_VQ) != 0 {
            indexes.push(2, GFP_KERNEL)?;
        }
        let report_slot = if features & (1 << F_REPORTING) != 0 {
            indexes.push(reporting_queue_index(handle.host_features), GFP_KERNEL)?;
            indexes.len() - 1
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
                handle: HandleRef(core::ptr::NonNull::from(handle)),
                // Balloon pages leave the managed page counts unless the device deflates on
                // OOM (as C); the core does it, across zones too when a page migrates.
                list <- BalloonList::new::<BalloonShared>(adjust_managed),
                dev: ARef::from(adev.as_ref()),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: The queues are deleted in `unbind` (or below on failure), before the handle
        // can go away.
        let vqs = unsafe { handle.find_vqs(&indexes, shared.clone()) }.inspect_err(|e| {
            dev_err!(adev, "cannot set up the queues: {:?}\n", e);
            handle.fail();
        })?;
        {
            let mut state = shared.state.lock();
            state.engine.host.list = Some(ListRef::new(&shared));
            state.engine.host.vqs = Some(vqs);
        }
        if shared.has(F_PAGE_POISON) {
            if let Err(e) = shared.write_poison(poison.unwrap_or(0)) {
                dev_err!(adev, "cannot tell the device the poison value: {:?}\n", e);
                Self::abort_probe(&shared);
                return Err(e);
            }
        }
        handle.ready();
        if shared.has(F_STATS_VQ) {
            shared.send_stats(true);
        }
        let hooks = Self::pressure_hooks(&shared).and_then(|hooks| {
            *shared.hooks.lock() = Some(hooks);
            Self::register_reporting(&shared)
        });
        if let Err(e) = hooks {
            Self::abort_probe(&shared);
            return Err(e);
        }

        dev_info!(
            adev,
            "balloon ready (device features {:#010x}, negotiated {:#x})\n",
            handle.host_features,
            features
        );
        // Move toward the current target right away.
        let _ = workqueue::system_freezable().enqueue::<Arc<BalloonShared>, 0>(shared.clone());
        Ok(Balloon {
            _status: status,
            _stats: stats_file,
            _dir: dir,
            shared,
        })
    }

    fn unbind<'bound>(adev: &'bound auxiliary::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let shared = &this.shared;
        // Quiesce (as `virtballoon_quiesce()`): no more reports (this waits for one in
        // progress, which is bounded), no more pressure callbacks, no more work.
        drop(shared.reporting.lock().take());
        drop(shared.hooks.lock().take());
        shared.stop.store(true, Relaxed);
        shared.flush_work();
        let handle = shared.handle.get();
        shared.leak_all();
        shared.write_actual(0);
        // Reset before deleting the queues (QEMU resets the device on QUEUE_PFN = 0 anyway);
        // then nothing the device holds is in use any more: release what it did not return.
        handle.reset();
        shared.release_everything();
        // Dropped outside the state lock (see `abort_probe`).
        let vqs = shared.state.lock().engine.host.vqs.take();
        drop(vqs);
        // Work queued by an interrupt after the first flush: flush once more, now that no
        // interrupt can come.
        shared.flush_work();
        dev_info!(adev, "balloon removed, all pages returned\n");
    }
}

/// The module: the auxiliary driver registration, with the contract check first.
///
/// Drop order (field order): the driver is unregistered first (every balloon unbound, its
/// work flushed), then the workqueue goes.
#[pin_data]
struct VirtioBalloonModule {
    #[pin]
    _driver: kernel::driver::Registration<auxiliary::Adapter<BalloonDriver>>,
    _queue: wq::ReclaimQueue,
    #[cfg(virtio_rs_kunit)]
    _switches: testing::TestSwitches,
}

impl kernel::InPlaceModule for VirtioBalloonModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pin_init::pin_init_scope(move || {
            abi::check_ring_abi()?;
            // Before the driver: a balloon bound at registration queues work on it.
            let queue = wq::ReclaimQueue::new(c"virtio_balloon_rs")?;
            Ok(try_pin_init!(Self {
                _driver <- kernel::driver::Registration::new(
                    <LocalModule as kernel::ModuleMetadata>::NAME,
                    module
                ),
                _queue: queue,
                #[cfg(virtio_rs_kunit)]
                _switches: testing::TestSwitches::new()?,
            }))
        })
    }
}

module! {
    type: VirtioBalloonModule,
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
        deflate_policy: u32 {
            default: 0,
            description: "Deflate under pressure: 0 auto (OOM notifier if DEFLATE_ON_OOM), 1 oom, 2 shrinker, 3 both, 4 none",
        },
    },
}
