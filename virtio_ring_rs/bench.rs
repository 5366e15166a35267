// SPDX-License-Identifier: GPL-2.0

//! Ring micro-benchmark (placeholder until the benchmark lands).

use kernel::prelude::*;

/// Runs `cycles` add + kick-prepare + device completion + get_buf cycles and logs ns/cycle.
pub(crate) fn run(_cycles: u32) -> Result {
    Err(ENOTSUPP)
}
