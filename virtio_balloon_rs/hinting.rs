// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT): during a live migration the host asks
//! which guest memory is free, so that it need not send those pages; the driver answers by
//! taking free memory out of the allocator in large blocks and naming them on the free page
//! queue, and gives the blocks back when the host is done, or earlier when the guest needs
//! memory (`report_free_page_func()` and its helpers in `virtio_balloon.c`).
//!
//! The protocol, driven by the host through `free_page_hint_cmd_id` (configuration offset 8,
//! LE) and a configuration interrupt:
//!
//! | the device shows | the driver |
//! |---|---|
//! | a new command id (≥ 2, not the one it served last) | sends the id (a device-readable buffer), then hints free blocks (device-writable buffers of [`BLOCK_BYTES`]) until memory runs out, the id changes or the queue stays full, then sends [`CMD_ID_STOP`] |
//! | [`CMD_ID_STOP`] (0) | stops hinting (the id changed) |
//! | [`CMD_ID_DONE`] (1) | gives every hinted block back to the guest |
//!
//! QEMU asks after each dirty bitmap sync of a precopy migration while the VM runs and says
//! DONE before the VM state moves; it only records the addresses (those pages are left out
//! of the migration) and never reads or writes the blocks.  The guest may therefore take a
//! block back while the device still holds its buffer (writing it dirties the page again,
//! which the next bitmap sync sees): the shrinker gives hinted blocks back first when memory
//! runs short, as C's does.
//!
//! Blocks are allocated with `__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC` and no reclaim
//! at all: hinting only takes memory that is free right now, never what reclaim could make
//! free (the blocks are `mm.rs`'s [`PageBlock`]s).  The glue to the balloon (its queue, its
//! configuration, the work item) is [`HintQueue`], implemented by the balloon at the end of
//! this file.
//!
//! No `unsafe`.
//!
//! Lock order: the balloon's state lock (inside [`HintQueue::with_hint_vq`]) and
//! [`HintPool::blocks`] are never held together; [`HintPool::run`] is taken only by the work
//! item, outside both.

use crate::abi::{
    LegacyBuf,
    Sg,
    Virtqueue, //
};
use crate::config::CONFIG_CMD_ID;
use crate::mm::{
    gfp,
    PageBlock,
    PAGES_PER_PAGE, //
};
use crate::pressure::{
    Deflate,
    Pressure, //
};
use crate::shared::BalloonShared;
use crate::stats::Counters;
use core::num::NonZeroUsize;
use kernel::{
    bindings, device, new_mutex, new_spinlock,
    page::PAGE_SHIFT,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        ArcBorrow,
        Mutex,
        SpinLock, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
    workqueue::{
        self,
        WorkItem, //
    },
};

/// `VIRTIO_BALLOON_CMD_ID_STOP`: the host wants no (more) hints.
pub(crate) const CMD_ID_STOP: u32 = 0;
/// `VIRTIO_BALLOON_CMD_ID_DONE`: the host is done with the hints; the blocks may go back.
pub(crate) const CMD_ID_DONE: u32 = 1;

/// Order of a hinted block: the largest the buddy allocator has (`MAX_PAGE_ORDER`, 4 MiB on
/// x86-64), as C's `VIRTIO_BALLOON_HINT_BLOCK_ORDER`.
pub(crate) const BLOCK_ORDER: u32 = bindings::MAX_PAGE_ORDER;
/// Bytes of a hinted block.
// CAST: `PAGE_SHIFT` is 12.
pub(crate) const BLOCK_BYTES: u32 = 1 << (BLOCK_ORDER + PAGE_SHIFT as u32);
/// Device (4 KiB) pages of a hinted block.
// CAST: widening.
const BLOCK_BALLOON_PAGES: u64 = (1u64 << BLOCK_ORDER) * PAGES_PER_PAGE as u64;

/// Index of the free page queue on a device that offers FREE_PAGE_HINT: QEMU creates the
/// queues inflate, deflate, stats (always), free page, reporting, and a legacy device numbers
/// them consecutively.
pub(crate) const QUEUE_INDEX: u16 = 3;

/// Token of the buffer holding the id of the command being served.
const ID_TOKEN: NonZeroUsize = NonZeroUsize::MIN;
/// Token of the buffer holding [`CMD_ID_STOP`].
const STOP_TOKEN: NonZeroUsize = NonZeroUsize::MIN.saturating_add(1);
/// Token of a hinted block (the blocks themselves are on [`HintPool::blocks`]).
const BLOCK_TOKEN: NonZeroUsize = NonZeroUsize::MIN.saturating_add(2);

/// How long a run waits for the device to hand back the previous command's id buffer, or a
/// descriptor for the next block, before it ends.
// TIMEOUT: QEMU's iothread polls the queue while hinting and returns each buffer at once; a
// device that keeps the queue full this long is stopped or broken, and the run ends (the
// hinted blocks stay until DONE, the shrinker or unbind).
const QUEUE_WAIT_MS: u32 = 1000;

/// Flags of a hinted block, as C's `VIRTIO_BALLOON_FREE_PAGE_ALLOC_FLAG`: no reclaim (neither
/// direct nor kswapd), no retries, no warning, no emergency reserves.
const HINT_GFP: bindings::gfp_t = gfp(bindings::___GFP_NORETRY_BIT)
    | gfp(bindings::___GFP_NOWARN_BIT)
    | gfp(bindings::___GFP_NOMEMALLOC_BIT);

/// What the driver does with the command id the device shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// DONE: give every hinted block back to the guest.
    ReturnAll,
    /// A new command: send its id, then hint.
    Start(u32),
    /// STOP, or the command already served: nothing.
    Idle,
}

/// The step for command id `received` when the last command served was `active`
/// (`report_free_page_func()`).
pub(crate) fn command(received: u32, active: u32) -> Command {
    match received {
        CMD_ID_DONE => Command::ReturnAll,
        CMD_ID_STOP => Command::Idle,
        id if id == active => Command::Idle,
        id => Command::Start(id),
    }
}

/// Whether a run serving `active` goes on while the device shows `received`: any change (a
/// STOP, DONE or a newer command) ends it.
pub(crate) fn keep_hinting(received: u32, active: u32) -> bool {
    received == active
}

/// The command id as last read from the device, read again only after a configuration
/// interrupt (C's `config_read_bitmap` and `cmd_id_received_cache`): a configuration read is
/// a trip to the device, and a run checks before each block.
pub(crate) struct CmdCache {
    /// A configuration interrupt came since the last read.
    changed: Atomic<bool>,
    /// The id last read; [`CMD_ID_STOP`] before the first.
    received: Atomic<u32>,
}

impl CmdCache {
    /// Nothing read yet: STOP, and the first look reads the device.
    pub(crate) fn new() -> Self {
        Self {
            changed: Atomic::new(true),
            received: Atomic::new(CMD_ID_STOP),
        }
    }

    /// Notes a configuration interrupt; true if no read was pending, i.e. the work item must
    /// be queued to look.
    pub(crate) fn note_change(&self) -> bool {
        !self.changed.xchg(true, Relaxed)
    }

    /// The current command id: `read()` when an interrupt came since the last read (a failed
    /// read keeps the last value), else the last value.
    pub(crate) fn get(&self, read: impl FnOnce() -> Result<u32>) -> u32 {
        if self.changed.xchg(false, Relaxed) {
            if let Ok(id) = read() {
                self.received.store(id, Relaxed);
            }
        }
        self.received.load(Relaxed)
    }
}

/// The balloon as free page hinting needs it.
pub(crate) trait HintQueue {
    /// Runs `f` on the free page queue, under the lock that serializes the balloon's queues;
    /// `None` once the queues are gone.
    fn with_hint_vq<R>(&self, f: impl FnOnce(&mut Virtqueue) -> R) -> Option<R>;
    /// Reads `free_page_hint_cmd_id` from the device's configuration.
    ///
    /// # Errors
    ///
    /// The transport's, if the configuration cannot be read.
    fn read_cmd_id(&self) -> Result<u32>;
    /// Whether the balloon is being torn down.
    fn stopping(&self) -> bool;
}

/// A block of `1 << BLOCK_ORDER` guest pages taken from the allocator to be hinted; freed
/// when dropped.
pub(crate) type HintBlock = PageBlock<BLOCK_ORDER>;

/// State of the work item, between runs.
struct Run {
    /// The command id being (or last) served, at index 0, and [`CMD_ID_STOP`] at index 1:
    /// the two device-readable buffers, in memory the device reads at its guest-physical
    /// address.
    ids: LegacyBuf<u32>,
    /// The last command served (C's `cmd_id_active`); [`CMD_ID_STOP`] before the first.
    active: u32,
    /// The device holds the id buffer.
    id_held: bool,
    /// The device holds the stop buffer.
    stop_held: bool,
}

impl Run {
    /// Takes back what the device used: its id and stop buffers, and blocks (which stay on
    /// the pool's list until the host says DONE).
    fn reap(&mut self, vq: &mut Virtqueue) {
        while let Some((token, _)) = vq.get_buf() {
            if token == ID_TOKEN {
                self.id_held = false;
            } else if token == STOP_TOKEN {
                self.stop_held = false;
            }
        }
    }
}

/// The hinted blocks and the work item's state.
#[pin_data]
pub(crate) struct HintPool {
    /// The blocks hinted and not given back yet; capacity for every block the guest has,
    /// reserved at probe (`kvmalloc()`: 2 MiB for a 1 TiB guest), so pushing never
    /// allocates.
    #[pin]
    blocks: SpinLock<KVVec<HintBlock>>,
    /// The work item's state (one run at a time: a work item never runs concurrently with
    /// itself).
    #[pin]
    run: Mutex<Run>,
    /// The command id the device shows.
    cmd: CmdCache,
    /// The free page queue broke (logged): no more hinting until unbind.
    lost: Atomic<bool>,
    /// A run ended on a full queue (logged once).
    warned: Atomic<bool>,
    /// Where hinting is counted (debugfs `status`).
    counters: Arc<Counters>,
    /// For logging.
    dev: ARef<device::Device>,
}

impl HintPool {
    /// A pool for a guest of `total_pages` guest pages, with the id buffers `ids` (two
    /// elements).
    ///
    /// # Errors
    ///
    /// `ENOMEM`, `EINVAL` if `ids` has fewer than two elements.
    pub(crate) fn new(
        ids: LegacyBuf<u32>,
        total_pages: u64,
        counters: Arc<Counters>,
        dev: ARef<device::Device>,
    ) -> Result<Arc<Self>> {
        if ids.len() < 2 {
            return Err(EINVAL);
        }
        let most = usize::try_from(total_pages >> BLOCK_ORDER)?.saturating_add(1);
        let blocks = KVVec::with_capacity(most, GFP_KERNEL)?;
        Arc::pin_init(
            pin_init!(Self {
                blocks <- new_spinlock!(blocks),
                run <- new_mutex!(Run {
                    ids,
                    active: CMD_ID_STOP,
                    id_held: false,
                    stop_held: false,
                }),
                cmd: CmdCache::new(),
                lost: Atomic::new(false),
                warned: Atomic::new(false),
                counters,
                dev,
            }),
            GFP_KERNEL,
        )
    }

    /// A configuration interrupt came: true if the work item must be queued.
    pub(crate) fn config_changed(&self) -> bool {
        self.cmd.note_change()
    }

    /// The work item: does what the device's command id asks (C's `report_free_page_func()`).
    pub(crate) fn work(&self, q: &impl HintQueue) {
        let received = self.cmd.get(|| q.read_cmd_id());
        self.counters.hint_cmd_id.store(received.into(), Relaxed);
        let mut run = self.run.lock();
        match command(received, run.active) {
            Command::ReturnAll => {
                let n = self.give_back(usize::MAX);
                Counters::add(&self.counters.hint_returned, n * BLOCK_BALLOON_PAGES);
            }
            Command::Start(id) if !q.stopping() && !self.lost.load(Relaxed) => {
                self.serve(q, &mut run, id)
            }
            Command::Start(_) | Command::Idle => {}
        }
    }

    /// Serves command `id`: sends the id, hints blocks while the command lasts, sends STOP.
    fn serve(&self, q: &impl HintQueue, run: &mut Run, id: u32) {
        Counters::add(&self.counters.hint_runs, 1);
        // Taken whatever happens next: a failed start must not be retried in a loop, the
        // next command comes with a new id.
        run.active = id;
        if self.send_id(q, run, id).is_err() {
            return;
        }
        let mut full_ms = 0;
        loop {
            if q.stopping() || !keep_hinting(self.cmd.get(|| q.read_cmd_id()), id) {
                break;
            }
            if self.list_full() {
                // Every block the guest had at probe is hinted (memory was added since).
                break;
            }
            // No block to take while the queue is full (C allocates and frees one meanwhile).
            let room = q.with_hint_vq(|vq| {
                run.reap(vq);
                vq.num_free() >= 2
            });
            if room == Some(false) {
                if !self.wait_for_room(&mut full_ms) {
                    break;
                }
                continue;
            }
            // Everything free right now is hinted when this fails.
            let Some(block) = HintBlock::alloc(HINT_GFP) else {
                break;
            };
            let posted = q.with_hint_vq(|vq| {
                run.reap(vq);
                if vq.is_broken() {
                    return Err(EIO);
                }
                // One descriptor stays for the STOP buffer.
                if vq.num_free() < 2 {
                    return Ok(false);
                }
                vq.add_inbuf(Sg::new(block.addr(), BLOCK_BYTES), BLOCK_TOKEN)?;
                vq.kick();
                Ok(true)
            });
            match posted {
                Some(Ok(true)) => {
                    full_ms = 0;
                    // Cannot fail: the capacity was checked above and only this work item
                    // adds; on failure the block is freed, which a hint allows.
                    let _ = self.blocks.lock().push_within_capacity(block);
                    Counters::add(&self.counters.hinted, BLOCK_BALLOON_PAGES);
                    self.count_held();
                }
                Some(Ok(false)) => {
                    drop(block);
                    if !self.wait_for_room(&mut full_ms) {
                        break;
                    }
                }
                Some(Err(e)) => {
                    drop(block);
                    self.lose(format_args!("cannot hint a free page block ({:?})", e));
                    break;
                }
                None => break,
            }
        }
        let _ = self.send_stop(q, run);
    }

    /// Sends the id of command `id` (`send_cmd_id_start()`).
    ///
    /// # Errors
    ///
    /// `EBUSY` if the device still holds the previous id buffer, or every descriptor, after
    /// [`QUEUE_WAIT_MS`],
    /// `EIO` for a broken queue, `ENODEV` without queues, or the error of adding the buffer.
    fn send_id(&self, q: &impl HintQueue, run: &mut Run, id: u32) -> Result {
        let mut waited = 0;
        loop {
            let r = q.with_hint_vq(|vq| {
                run.reap(vq);
                if vq.is_broken() {
                    return Err(EIO);
                }
                // The previous id still with the device, or every descriptor taken by blocks
                // it has not handed back yet: wait (it returns them while it polls).
                if run.id_held || vq.num_free() == 0 {
                    return Err(EBUSY);
                }
                kernel::dma_write!(run.ids, [try: 0], id);
                let sg = Sg::new(run.ids.device_addr(), 4);
                vq.add_outbuf(sg, ID_TOKEN)?;
                run.id_held = true;
                vq.kick();
                Ok(())
            });
            match r {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) if e == EBUSY && waited < QUEUE_WAIT_MS => {
                    fsleep(Delta::from_millis(1));
                    waited += 1;
                }
                Some(Err(e)) if e == EBUSY => {
                    self.run_failed(format_args!(
                        "the device kept the last command id for {} ms",
                        QUEUE_WAIT_MS
                    ));
                    return Err(e);
                }
                Some(Err(e)) => {
                    self.lose(format_args!("cannot send command id {} ({:?})", id, e));
                    return Err(e);
                }
                None => return Err(ENODEV),
            }
        }
    }

    /// Sends [`CMD_ID_STOP`] (`send_cmd_id_stop()`); skipped if the device still holds the
    /// previous one (it says the same).
    ///
    /// # Errors
    ///
    /// `EIO` for a broken queue, `ENODEV` without queues, or the error of adding the buffer.
    fn send_stop(&self, q: &impl HintQueue, run: &mut Run) -> Result {
        let r = q.with_hint_vq(|vq| {
            run.reap(vq);
            if vq.is_broken() {
                return Err(EIO);
            }
            if run.stop_held {
                return Ok(());
            }
            kernel::dma_write!(run.ids, [try: 1], CMD_ID_STOP);
            let sg = Sg::new(run.ids.device_addr() + 4, 4);
            vq.add_outbuf(sg, STOP_TOKEN)?;
            run.stop_held = true;
            vq.kick();
            Ok(())
        });
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                self.lose(format_args!("cannot send the stop id ({:?})", e));
                Err(e)
            }
            None => Err(ENODEV),
        }
    }

    /// A run ended early without the queue being broken: counted, logged once.
    /// Waits one more millisecond for room on a full free page queue (`full_ms` so far);
    /// false, with the run failed, once that has lasted `QUEUE_WAIT_MS`.
    fn wait_for_room(&self, full_ms: &mut u32) -> bool {
        if *full_ms >= QUEUE_WAIT_MS {
            self.run_failed(format_args!(
                "the free page queue stayed full for {} ms",
                QUEUE_WAIT_MS
            ));
            return false;
        }
        fsleep(Delta::from_millis(1));
        *full_ms += 1;
        true
    }

    fn run_failed(&self, why: core::fmt::Arguments<'_>) {
        Counters::add(&self.counters.hint_errors, 1);
        if !self.warned.xchg(true, Relaxed) {
            dev_warn!(self.dev, "{}: free page hinting run ended early\n", why);
        }
    }

    /// The free page queue is unusable: hinting stops until unbind (logged once).
    fn lose(&self, why: core::fmt::Arguments<'_>) {
        Counters::add(&self.counters.hint_errors, 1);
        if !self.lost.xchg(true, Relaxed) {
            Counters::add(&self.counters.device_errors, 1);
            dev_err!(self.dev, "{}: free page hinting stops until unbound\n", why);
        }
    }

    /// Gives up to `n` hinted blocks back to the guest; returns how many.
    fn give_back(&self, n: usize) -> u64 {
        let mut done = 0u64;
        {
            let mut blocks = self.blocks.lock();
            for _ in 0..n {
                // Freed under the lock, as C does: `__free_pages()` does not sleep.
                match blocks.pop() {
                    Some(block) => drop(block),
                    None => break,
                }
                done += 1;
            }
        }
        self.count_held();
        done
    }

    /// Whether the list holds as many blocks as the guest had at probe.
    fn list_full(&self) -> bool {
        let blocks = self.blocks.lock();
        blocks.len() >= blocks.capacity()
    }

    /// Blocks hinted and not given back.
    fn held_blocks(&self) -> u64 {
        u64::try_from(self.blocks.lock().len()).unwrap_or(u64::MAX)
    }

    fn count_held(&self) {
        self.counters
            .hint_held
            .store(self.held_blocks() * BLOCK_BALLOON_PAGES, Relaxed);
    }

    /// Teardown, after the device was reset: takes back the buffers the device did not
    /// return and gives every hinted block back to the guest.
    pub(crate) fn release(&self, q: &impl HintQueue) {
        let mut run = self.run.lock();
        let _ = q.with_hint_vq(|vq| while vq.detach_unused().is_some() {});
        run.id_held = false;
        run.stop_held = false;
        drop(run);
        let n = self.give_back(usize::MAX);
        Counters::add(&self.counters.hint_returned, n * BLOCK_BALLOON_PAGES);
    }
}

/// The hinted blocks are the first memory reclaim gets back (C's shrinker, registered with
/// FREE_PAGE_HINT whatever the deflate policy): they are free memory the host merely knows
/// about.
impl Deflate for HintPool {
    fn reclaimable(&self) -> u64 {
        self.held_blocks() << BLOCK_ORDER
    }

    fn deflate(&self, pages: u64, _why: Pressure) -> u64 {
        let want = pages.div_ceil(1u64 << BLOCK_ORDER);
        let n = self.give_back(usize::try_from(want).unwrap_or(usize::MAX));
        Counters::add(&self.counters.hint_shrunk, n * BLOCK_BALLOON_PAGES);
        n << BLOCK_ORDER
    }
}

impl WorkItem<3> for BalloonShared {
    type Pointer = Arc<Self>;

    fn run(this: Arc<Self>) {
        if let Some(hint) = &this.hint {
            hint.work(&*this);
        }
    }
}

impl HintQueue for BalloonShared {
    fn with_hint_vq<R>(&self, f: impl FnOnce(&mut Virtqueue) -> R) -> Option<R> {
        let mut state = self.state.lock();
        let vq = state.engine.host.vqs.as_mut()?.get(self.hint_slot)?;
        Some(f(vq))
    }

    fn read_cmd_id(&self) -> Result<u32> {
        self.vdev.read(CONFIG_CMD_ID)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

impl BalloonShared {
    /// Queues the hinting work item (unbound: a run takes CPU time in one go, as on C's
    /// `WQ_CPU_INTENSIVE` queue).
    pub(crate) fn queue_hint_work(self: ArcBorrow<'_, Self>) {
        let _ = workqueue::system_unbound().enqueue::<Arc<Self>, 3>(self.into());
    }
}
