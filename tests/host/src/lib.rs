// SPDX-License-Identifier: GPL-2.0

//! Host build of the virtio-rs split ring core, with a simulated device for tests and fuzzing.
//!
//! [`ring`] is `virtio_ring_rs/core.rs`, the very file the kernel module builds. This crate is
//! `no_std` so that the core is checked to need nothing beyond `core`; so is [`device`], the
//! model of the device side (`virtio_ring_rs/device.rs`, which the KUnit suites and the ring
//! benchmark use too).  [`sim`] (which uses `std`) provides the memory model and the harness
//! the tests in `tests/` and the fuzz target in `fuzz/` drive them with.

#![no_std]

#[path = "../../../virtio_ring_rs/core.rs"]
pub mod ring;

// The name the ring core has in the kernel crate, for `device`.
use ring as split;

#[path = "../../../virtio_ring_rs/device.rs"]
pub mod device;

pub mod sim;
