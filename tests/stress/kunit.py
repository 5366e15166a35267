#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The KUnit suites of the modules (tests/kunit/run.py) on the debug kernel: the same runner,
with the longer boot timeout a KASAN kernel under TCG needs on a loaded machine.
Usage: kunit.py <directory with the test-flavour .ko files>; prints RESULT kunit P F."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "kunit"))
import run  # noqa: E402
import vm  # noqa: E402

BOOT_TIMEOUT = int(os.environ.get("VIRTIO_RS_STRESS_BOOT_TIMEOUT", "600"))


class SlowGuest(vm.Guest):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("boot_timeout", BOOT_TIMEOUT)
        super().__init__(*args, **kwargs)


if __name__ == "__main__":
    run.vm.Guest = SlowGuest
    sys.exit(run.main())
