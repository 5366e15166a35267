// SPDX-License-Identifier: GPL-2.0

//! Split virtqueue helpers for legacy virtio devices (driver side).
//!
//! The Rust counterpart of the split-ring half of `drivers/virtio/virtio_ring.c`.  It is a
//! library module: it registers no driver, and exports its functions in the `VIRTIO_RS` symbol
//! namespace to the virtio-rs transport (`virtio_pci_rs`) and device drivers
//! (`virtio_balloon_rs`), which reach them through the safe wrappers of the shared contract
//! in `common/virtio_rs.rs`.
//!
//! Loading it alone does nothing visible; `modprobe virtio_balloon_rs` loads it first.

use kernel::prelude::*;

#[path = "common/virtio_rs.rs"]
mod abi;

#[path = "virtio_ring_rs/export.rs"]
mod export;

use export::export_symbol_ns_gpl;

/// Largest queue size a split ring supports (virtio 1.x section 2.7: `Queue Size` is at most
/// 32768).
const MAX_QUEUE_SIZE: u32 = 32768;

/// Size of one descriptor (`struct vring_desc`).
const DESC_SIZE: usize = 16;

/// Bytes of a legacy split ring of `num` entries whose used ring is aligned to `align`:
/// the descriptor table, the available ring (flags, idx, `num` entries, `used_event`), padding
/// to `align`, then the used ring (flags, idx, `num` elements of 8 bytes, `avail_event`).
///
/// Returns `None` unless `num` is a power of two in `1..=32768` and `align` a power of two.
fn legacy_ring_size(num: u32, align: u32) -> Option<usize> {
    if !num.is_power_of_two() || num > MAX_QUEUE_SIZE || !align.is_power_of_two() {
        return None;
    }
    // CAST: u32 to usize is lossless on the 64-bit targets this module builds for.
    let (num, align) = (num as usize, align as usize);
    let avail_end = DESC_SIZE * num + 2 * (3 + num);
    let used_start = avail_end.checked_next_multiple_of(align)?;
    used_start.checked_add(2 * 3 + 8 * num)
}

/// The contract version this module implements (see [`abi::ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn virtio_rs_abi_version() -> u32 {
    abi::ABI_VERSION
}
export_symbol_ns_gpl!(virtio_rs_abi_version: abi::abi_fn::AbiVersion, "VIRTIO_RS");

/// Size in bytes of a legacy split ring, or 0 for an invalid `num` or `align`.
#[no_mangle]
pub extern "C" fn virtio_rs_vring_size(num: u32, align: u32) -> usize {
    legacy_ring_size(num, align).unwrap_or(0)
}
export_symbol_ns_gpl!(virtio_rs_vring_size: abi::abi_fn::VringSize, "VIRTIO_RS");

/// The module: a library with no state of its own.
struct VirtioRingModule;

impl kernel::Module for VirtioRingModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(Self)
    }
}

module! {
    type: VirtioRingModule,
    name: "virtio_ring_rs",
    authors: ["The virtio-rs developers"],
    description: "Split virtqueue helpers for legacy virtio devices (Rust)",
    license: "GPL",
}

#[cfg(virtio_rs_kunit)]
#[kunit_tests(virtio_ring_rs_layout)]
mod tests {
    use super::*;

    #[test]
    fn legacy_sizes_match_c() {
        // Values of the C `vring_size()` for align 4096.
        assert_eq!(legacy_ring_size(32, 4096), Some(4358));
        assert_eq!(legacy_ring_size(64, 4096), Some(4614));
        assert_eq!(legacy_ring_size(128, 4096), Some(5126));
        assert_eq!(legacy_ring_size(256, 4096), Some(10246));
        assert_eq!(legacy_ring_size(1024, 4096), Some(28678));
    }

    #[test]
    fn invalid_sizes_are_refused() {
        assert_eq!(legacy_ring_size(0, 4096), None);
        assert_eq!(legacy_ring_size(3, 4096), None);
        assert_eq!(legacy_ring_size(65536, 4096), None);
        assert_eq!(legacy_ring_size(256, 3000), None);
        assert_eq!(virtio_rs_vring_size(100, 4096), 0);
    }

    #[test]
    fn contract_version_is_exported() {
        assert_eq!(virtio_rs_abi_version(), abi::ABI_VERSION);
    }
}
