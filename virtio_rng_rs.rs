// SPDX-License-Identifier: GPL-2.0

//! Virtio entropy device driver.
//!
//! The Rust counterpart of `drivers/char/hw_random/virtio-rng.c`, written on the virtio-rs
//! driver API (`common/virtio.rs`) with no `unsafe` of its own (the hw_random glue in
//! `virtio_rng_rs/hwrng.rs` has it).  It binds to the transport's
//! `virtio_pci_rs.rng.<n>` devices, the legacy entropy device (virtio device type 4, one
//! request queue, no features, no configuration), and registers each as the hardware rng
//! `virtio_rng_rs.<n>`, which `/dev/hwrng` reads and the hw_random core feeds into the
//! kernel's entropy pool.
//!
//! A read hands the device one buffer of [`BUF_SIZE`] bytes (device-writable) and waits for
//! it, interruptibly and at most `timeout_ms` milliseconds: unlike C, which waits as long as
//! the device takes, a device that never answers makes reads fail with `ETIMEDOUT` instead
//! of hanging the reader and the hw_random core (the buffer stays with the device and a later
//! read collects it).  Unbinding with a read in flight wakes the reader, which gets `ENODEV`.
//!
//! To make it probe in QEMU, add `-device virtio-rng-pci,disable-modern=on` and move the
//! function to `virtio_pci_rs` (see `virtio_pci_rs.rs`).

use core::num::NonZeroUsize;
use kernel::{
    new_condvar,
    new_mutex, //
    prelude::*,
    str::CString,
    sync::{
        Arc,
        ArcBorrow,
        CondVar,
        CondVarTimeoutResult,
        Mutex, //
    },
    time::{
        msecs_to_jiffies,
        Jiffies, //
    },
};

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_rng_rs/hwrng.rs"]
mod hwrng;

use abi::{
    virtio::{
        self,
        Device,
        QueueInfo,
        Virtqueues, //
    },
    LegacyBuf,
    Sg, //
};

/// Bytes the device fills per request (C asks for up to a cache line, 64 bytes on x86).
const BUF_SIZE: usize = 64;

/// The token of the one request buffer.
const TOKEN: NonZeroUsize = NonZeroUsize::MIN;

/// Longest sleep between two looks at the queue while waiting for the device.
///
/// The queue callback runs in interrupt context and so cannot take the state mutex; a
/// notification between the reader's look at the queue and its sleep would be missed, and
/// this bounds what such a miss costs.
const WAIT_SLICE_MS: u32 = 20;

/// The state of a device, under [`Shared::state`].
struct State {
    /// The request queue; `None` once the device is going away.
    vqs: Option<Virtqueues<RngDriver>>,
    /// The buffer the device fills.
    buf: LegacyBuf<u8>,
    /// The buffer is with the device.
    busy: bool,
    /// Bytes of `buf` the device filled.
    avail: usize,
    /// Bytes of `buf` already handed out.
    pos: usize,
}

/// What the queue callback and the readers share.
#[pin_data]
struct Shared {
    #[pin]
    state: Mutex<State>,
    /// Notified when the device returns the buffer or goes away.
    #[pin]
    used: CondVar,
    /// How long a read waits for the device.
    timeout: Jiffies,
}

impl Shared {
    /// Collects the buffer if the device returned it.
    fn collect(state: &mut State) -> Result {
        let vq = state.vqs.as_mut().and_then(|v| v.get(0)).ok_or(ENODEV)?;
        if vq.is_broken() {
            return Err(EIO);
        }
        if let Some((_, len)) = vq.get_buf() {
            // The ring clamps the length to the buffer's; bounded again for the copy.
            state.avail = usize::try_from(len).unwrap_or(BUF_SIZE).min(BUF_SIZE);
            state.pos = 0;
            state.busy = false;
        }
        Ok(())
    }

    /// Gives the buffer to the device, or notifies it again if it has it (a notification may
    /// have been lost).
    fn request(state: &mut State) -> Result {
        let addr = state.buf.device_addr();
        let busy = state.busy;
        let vq = state.vqs.as_mut().and_then(|v| v.get(0)).ok_or(ENODEV)?;
        if !busy {
            // CAST: `BUF_SIZE` is a small constant.
            vq.add_inbuf(Sg::new(addr, BUF_SIZE as u32), TOKEN)?;
        }
        if !vq.kick() {
            return Err(EIO);
        }
        state.busy = true;
        Ok(())
    }

    /// Copies what the device filled and has not been handed out yet into `out`.
    fn take(state: &mut State, out: &mut [u8]) -> Result<usize> {
        let n = out.len().min(state.avail.saturating_sub(state.pos));
        for (i, b) in out.iter_mut().take(n).enumerate() {
            let at = state.pos + i;
            *b = kernel::dma_read!(state.buf, [try: at]);
        }
        state.pos += n;
        Ok(n)
    }

    /// Stops the device: readers get `ENODEV`, the device is reset and its queue deleted.
    fn shutdown(&self) {
        let vqs = self.state.lock().vqs.take();
        self.used.notify_all();
        // Outside the lock: resets the device and deletes the queue, which waits for the
        // queue callback.
        drop(vqs);
    }
}

/// The hw_random side of a device.
struct RngSource(Arc<Shared>);

impl hwrng::Source for RngSource {
    fn read(&self, out: &mut [u8], wait: bool) -> Result<usize> {
        let shared = &self.0;
        let mut state = shared.state.lock();
        let mut left = shared.timeout;
        loop {
            if state.busy {
                Shared::collect(&mut state)?;
            }
            let n = Shared::take(&mut state, out)?;
            if n > 0 {
                return Ok(n);
            }
            Shared::request(&mut state)?;
            if !wait {
                return Ok(0);
            }
            if left == 0 {
                return Err(ETIMEDOUT);
            }
            // TIMEOUT: `timeout_ms` in all, in slices of `WAIT_SLICE_MS` (see there).
            let slice = left.min(msecs_to_jiffies(WAIT_SLICE_MS)).max(1);
            match shared.used.wait_interruptible_timeout(&mut state, slice) {
                CondVarTimeoutResult::Signal { .. } => return Err(ERESTARTSYS),
                CondVarTimeoutResult::Timeout => left = left.saturating_sub(slice),
                CondVarTimeoutResult::Woken { jiffies } => {
                    left = left.saturating_sub(slice.saturating_sub(jiffies))
                }
            }
        }
    }
}

/// Per-device driver data.
///
/// Drop order (field order): the hw_random registration first (it waits for running
/// reads), then the shared state with the buffer (the queue is gone by then).
struct Rng {
    _hwrng: Pin<KBox<hwrng::Registration<RngSource>>>,
    shared: Arc<Shared>,
}

/// The virtio entropy driver.
struct RngDriver;

impl virtio::Driver for RngDriver {
    const ID_TABLE: &'static [virtio::DeviceId] = &[virtio::VIRTIO_ID_RNG];

    type Data = Rng;
    type Shared = Shared;

    fn probe(dev: &Device<'_>) -> Result<Rng> {
        // A legacy device gets guest-physical addresses, never DMA handles.
        let buf = LegacyBuf::<u8>::zeroed_slice(dev.dma_device(), BUF_SIZE, GFP_KERNEL)?;
        let timeout = msecs_to_jiffies(*module_parameters::timeout_ms.value());
        let shared = Arc::pin_init(
            pin_init!(Shared {
                state <- new_mutex!(State {
                    vqs: None,
                    buf,
                    busy: false,
                    avail: 0,
                    pos: 0,
                }),
                used <- new_condvar!(),
                timeout,
            }),
            GFP_KERNEL,
        )?;
        let vqs = dev
            .find_vqs::<Self>(&[QueueInfo::new(0)], shared.clone())
            .inspect_err(|e| {
                dev_err!(dev, "cannot set up the queue: {:?}\n", e);
                dev.fail();
            })?;
        shared.state.lock().vqs = Some(vqs);
        dev.ready();
        let registered =
            CString::try_from_fmt(fmt!("virtio_rng_rs.{}", dev.id())).and_then(|name| {
                KBox::pin_init(
                    hwrng::Registration::new(name, RngSource(shared.clone())),
                    GFP_KERNEL,
                )
            });
        let hwrng = match registered {
            Ok(r) => r,
            Err(e) => {
                dev_err!(dev, "cannot register with hw_random: {:?}\n", e);
                shared.shutdown();
                return Err(e);
            }
        };
        dev_info!(dev, "entropy source virtio_rng_rs.{} ready\n", dev.id());
        Ok(Rng {
            _hwrng: hwrng,
            shared,
        })
    }

    fn remove(_dev: &Device<'_>, data: &Rng) {
        // Readers in flight get `ENODEV` and leave, so that unregistering (when `data`
        // drops) does not wait for them.
        data.shared.shutdown();
    }

    fn vq_callback(shared: ArcBorrow<'_, Shared>, _queue: usize) {
        shared.used.notify_all();
    }
}

virtio::module_virtio_driver! {
    driver: RngDriver,
    name: "virtio_rng_rs",
    authors: ["The virtio-rs developers"],
    description: "Virtio entropy device driver for the virtio-rs legacy transport (Rust)",
    license: "GPL",
    imports_ns: ["VIRTIO_RS"],
    params: {
        timeout_ms: u32 {
            default: 1000,
            description: "Milliseconds a read waits for the device before it fails with ETIMEDOUT",
        },
    },
}
