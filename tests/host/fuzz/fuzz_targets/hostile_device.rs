// SPDX-License-Identifier: GPL-2.0

//! Fuzz target: a hostile device against the split ring core.
//!
//! The input is a ring configuration followed by driver operations (add with random out/in
//! counts and lengths, kick_prepare, get_buf, enable/disable callbacks, detach) interleaved
//! with honest device completions and arbitrary device writes to the used ring (index, ids,
//! lengths, flags, avail_event). The invariants are asserted inside
//! `virtio_ring_core::sim::hostile_run` (see its documentation): a panic is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virtio_ring_core::sim::hostile_run(data);
});
