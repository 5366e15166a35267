// SPDX-License-Identifier: GPL-2.0

//! Fault injection and observation points for the integration tests, compiled only into the
//! test flavour of the module (`--cfg virtio_rs_kunit`): the production `.ko` carries none of
//! it.  Everything lives in `/sys/kernel/debug/virtio_pci_rs/`:
//!
//! | file | what |
//! |---|---|
//! | `drop_kicks` | `1`: the transport drops every queue notification (it tells the ring the kick went out, but never writes `QUEUE_NOTIFY`), so the device never looks at new buffers: a device that stopped taking buffers, as far as a driver can tell |
//! | `dropped_kicks` | notifications dropped so far, so that a test can check the switch took effect |
//! | `fail_vectors` | for the next functions bound: `1` makes the per-queue MSI-X mode fail after its vectors were allocated (as if `request_irq()` failed for a queue vector); `2` also makes the shared mode fail (as if the device read back NO_VECTOR for the configuration vector), which leaves INTx |
//! | `fail_find_vqs` | `N`: the next `N` `find_vqs` calls fail after every queue was programmed (`QUEUE_PFN` written), as an allocation failure at that point would |
//! | `ring_addrs` | per queue of the last `find_vqs`: the ring's DMA handle, its guest-physical address, and the address the transport programmed (`QUEUE_PFN << 12`) |
//! | `gone` | `1`: the function behaves as if surprise-removed: every BAR read returns all ones, writes go nowhere, and `pci_device_is_present()` is taken as false |
//!
//! No `unsafe`.

use crate::abi::{
    switches::{
        count_down,
        counter,
        switch,
        Counter,
        Switch, //
    },
    MAX_VQS,
};
use kernel::{
    debugfs, fmt,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
};

/// Non-zero: drop every queue notification.
static DROP_KICKS: Atomic<u32> = Atomic::new(0);

/// Notifications dropped so far.
static DROPPED_KICKS: Atomic<u32> = Atomic::new(0);

/// Interrupt modes made to fail: 1 per-queue, 2 per-queue and shared.
static FAIL_VECTORS: Atomic<u32> = Atomic::new(0);

/// `find_vqs` calls still to fail after programming the queues.
static FAIL_FIND_VQS: Atomic<u32> = Atomic::new(0);

/// Non-zero: the function looks surprise-removed.
static GONE: Atomic<u32> = Atomic::new(0);

/// Per queue index: DMA handle, guest-physical address, programmed address of the ring.
static RING_ADDRS: [[Atomic<u64>; 3]; MAX_VQS] = [const { [const { Atomic::new(0) }; 3] }; MAX_VQS];

/// Whether the next notification must be dropped; counts it if so.
pub(crate) fn drop_kick() -> bool {
    if DROP_KICKS.load(Relaxed) == 0 {
        return false;
    }
    DROPPED_KICKS.add(1u32, Relaxed);
    true
}

/// Whether the per-queue MSI-X mode must fail (after its vectors were allocated).
pub(crate) fn fail_per_queue_vectors() -> bool {
    FAIL_VECTORS.load(Relaxed) >= 1
}

/// Whether the shared MSI-X mode must fail (after its vectors were allocated).
pub(crate) fn fail_shared_vectors() -> bool {
    FAIL_VECTORS.load(Relaxed) >= 2
}

/// Whether this `find_vqs` must fail once its queues are programmed; counts it down if so.
pub(crate) fn fail_find_vqs() -> bool {
    count_down(&FAIL_FIND_VQS)
}

/// Whether the function must look surprise-removed.
pub(crate) fn gone() -> bool {
    GONE.load(Relaxed) != 0
}

/// Records the addresses of queue `index`'s ring.
pub(crate) fn record_ring(index: u16, dma: u64, phys: u64, programmed: u64) {
    if let Some(slot) = RING_ADDRS.get(usize::from(index)) {
        slot[0].store(dma, Relaxed);
        slot[1].store(phys, Relaxed);
        slot[2].store(programmed, Relaxed);
    }
}

/// Shows the ring addresses of every queue that had one.
fn show_rings((): &(), f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (index, slot) in RING_ADDRS.iter().enumerate() {
        let [dma, phys, programmed] = [&slot[0], &slot[1], &slot[2]].map(|a| a.load(Relaxed));
        if phys != 0 {
            writeln!(
                f,
                "{} dma {:#x} phys {:#x} programmed {:#x}",
                index, dma, phys, programmed
            )?;
        }
    }
    Ok(())
}

/// The debugfs files of the test switches; removing them (dropping) also turns them off.
pub(crate) struct TestSwitches {
    _switches: KVec<Switch>,
    _dropped: Counter,
    _rings: Pin<KBox<debugfs::File<()>>>,
    _dir: debugfs::Dir,
}

impl TestSwitches {
    /// Creates the files of `/sys/kernel/debug/virtio_pci_rs/`.
    ///
    /// # Errors
    ///
    /// `ENOMEM`.
    pub(crate) fn new() -> Result<Self> {
        let dir = debugfs::Dir::new(c"virtio_pci_rs");
        let mut switches = KVec::with_capacity(4, GFP_KERNEL)?;
        for (name, v) in [
            (c"drop_kicks", &DROP_KICKS),
            (c"fail_vectors", &FAIL_VECTORS),
            (c"fail_find_vqs", &FAIL_FIND_VQS),
            (c"gone", &GONE),
        ] {
            switches.push(switch(&dir, name, v)?, GFP_KERNEL)?;
        }
        let dropped = counter(&dir, c"dropped_kicks", &DROPPED_KICKS)?;
        let rings = KBox::pin_init(
            dir.read_callback_file(c"ring_addrs", Ok::<_, Error>(()), &show_rings),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _switches: switches,
            _dropped: dropped,
            _rings: rings,
            _dir: dir,
        })
    }
}

impl Drop for TestSwitches {
    fn drop(&mut self) {
        for v in [&DROP_KICKS, &FAIL_VECTORS, &FAIL_FIND_VQS, &GONE] {
            v.store(0, Relaxed);
        }
    }
}
