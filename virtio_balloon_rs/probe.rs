// SPDX-License-Identifier: GPL-2.0

//! Probe helpers of the balloon driver: the `deflate_policy` values, registering free page
//! reporting and the pressure hooks, and undoing a probe that failed after the queues were
//! set up.
//!
//! No `unsafe`.

use crate::{
    config::{
        F_DEFLATE_ON_OOM,
        NO_SLOT, //
    },
    device::DeviceHost,
    engine::{
        self,
        Host, //
    },
    module_parameters,
    pressure::{
        OomNotifier,
        Shrinker, //
    },
    reporting::PageReporting,
    shared::{
        BalloonShared,
        PressureHooks, //
    },
    BalloonDriver, //
};
use kernel::{
    prelude::*,
    sync::{
        atomic::Relaxed,
        Arc, //
    },
};

/// `deflate_policy` values.
pub(crate) mod policy {
    /// The OOM notifier when DEFLATE_ON_OOM is negotiated, else nothing (the C driver).
    pub(crate) const AUTO: u32 = 0;
    /// The OOM notifier.
    pub(crate) const OOM: u32 = 1;
    /// The shrinker.
    pub(crate) const SHRINKER: u32 = 2;
    /// Both.
    pub(crate) const BOTH: u32 = 3;
    /// Neither: the balloon only follows the device.
    pub(crate) const NONE: u32 = 4;
}

impl BalloonDriver {
    /// Registers with free page reporting when VIRTIO_BALLOON_F_REPORTING was negotiated, for
    /// reports no larger than the reporting queue (`virtqueue_get_vring_size()` in C).
    ///
    /// # Errors
    ///
    /// `EBUSY` if another device reports free pages already (one at a time), `ENOMEM`.
    pub(crate) fn register_reporting(shared: &Arc<BalloonShared>) -> Result {
        if shared.report_slot == NO_SLOT {
            return Ok(());
        }
        let capacity = {
            let mut state = shared.state.lock();
            let vq = state
                .engine
                .host
                .vqs
                .as_mut()
                .and_then(|v| v.get(shared.report_slot))
                .ok_or(ENODEV)?;
            // The queue is empty: its free descriptors are its size.
            usize::try_from(vq.num_free())?
        };
        // Not under the state lock: registering takes `page_reporting_mutex`, which
        // unregistering holds while it waits for a report (that takes the state lock).
        let registration = PageReporting::new(shared.clone(), capacity).inspect_err(|e| {
            dev_err!(shared.dev, "cannot register free page reporting: {:?}\n", e);
        })?;
        *shared.reporting.lock() = Some(registration);
        Ok(())
    }

    /// The one teardown, used by unbind and by every probe error after the queues were set
    /// up: unregisters what was registered (waiting for a report in progress, which is
    /// bounded), stops the work, deflates everything first when `deflate` (unbind, as
    /// `remove_common()` of the C driver: the device learns the balloon is empty), resets
    /// the device, releases what it did not return, and deletes the queues.
    pub(crate) fn teardown(shared: &Arc<BalloonShared>, deflate: bool) {
        drop(shared.reporting.lock().take());
        drop(shared.hooks.lock().take());
        shared.stop.store(true, Relaxed);
        shared.flush_work();
        if deflate {
            shared.leak_all();
            shared.write_actual(0);
        }
        // Reset before deleting the queues (QEMU resets the device on QUEUE_PFN = 0 anyway);
        // then nothing the device holds is in use any more: release what it did not return.
        shared.vdev.reset();
        shared.release_everything();
        if let Some(hint) = &shared.hint {
            hint.release(&**shared);
        }
        // Not under the state lock: deleting queues takes the transport's lock, which it
        // holds while allocating (and so while reclaim may call our shrinker).
        let vqs = shared.state.lock().engine.host.vqs.take();
        drop(vqs);
        // Work queued by an interrupt after the first flush: flush once more, now that no
        // interrupt can come.
        shared.flush_work();
    }

    /// Checks the module parameters (before the device is touched).
    pub(crate) fn check_parameters(dev: &kernel::device::Device) -> Result {
        let policy = *module_parameters::deflate_policy.value();
        if policy > policy::NONE {
            dev_err!(dev, "deflate_policy={} is not 0-4\n", policy);
            return Err(EINVAL);
        }
        let msg_pages = *module_parameters::msg_pages.value();
        let in_flight = *module_parameters::msgs_in_flight.value();
        if !(1..=<DeviceHost as Host>::MSG_PAGES).contains(&(msg_pages as usize))
            || !(1..=engine::SLOTS).contains(&(in_flight as usize))
        {
            dev_err!(
                dev,
                "msg_pages={} msgs_in_flight={}: expected 1-{} and 1-{}\n",
                msg_pages,
                in_flight,
                <DeviceHost as Host>::MSG_PAGES,
                engine::SLOTS
            );
            return Err(EINVAL);
        }
        Ok(())
    }

    /// Registers the OOM notifier and the shrinker that `deflate_policy` asks for.
    pub(crate) fn pressure_hooks(shared: &Arc<BalloonShared>) -> Result<PressureHooks> {
        let deflate_on_oom = shared.has(F_DEFLATE_ON_OOM);
        let (oom, shrinker) = match *module_parameters::deflate_policy.value() {
            policy::AUTO => (deflate_on_oom, false),
            policy::OOM => (true, false),
            policy::SHRINKER => (false, true),
            policy::BOTH => (true, true),
            policy::NONE => (false, false),
            other => {
                dev_err!(shared.dev, "deflate_policy={} is not 0-4\n", other);
                return Err(EINVAL);
            }
        };
        Ok(PressureHooks {
            _oom: if oom {
                Some(OomNotifier::new(shared.clone(), shared.oom_pages)?)
            } else {
                None
            },
            _shrinker: if shrinker {
                Some(Shrinker::new(shared.clone(), c"virtio_balloon_rs")?)
            } else {
                None
            },
            _hint: match &shared.hint {
                Some(hint) => Some(Shrinker::new(hint.clone(), c"virtio_balloon_rs_hints")?),
                None => None,
            },
        })
    }
}
