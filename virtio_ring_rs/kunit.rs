// SPDX-License-Identifier: GPL-2.0

//! KUnit suites of the ring against a simulated device (placeholder).
