// SPDX-License-Identifier: GPL-2.0

//! Host build of the virtio-rs split ring core, with a simulated device for tests and fuzzing.
//!
//! [`ring`] is `virtio_ring_rs/core.rs`, the very file the kernel module builds. This crate is
//! `no_std` so that the core is checked to need nothing beyond `core`; [`sim`] (which uses
//! `std`) provides the memory and device models the tests in `tests/` and the fuzz target in
//! `fuzz/` drive it with.

#![no_std]

#[path = "../../../virtio_ring_rs/core.rs"]
pub mod ring;

pub mod sim;
