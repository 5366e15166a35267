# SPDX-License-Identifier: GPL-2.0
"""What the tools (demo, benchmarks) share: importing this puts the test library
(tests/lib: `balloon`, `vm`) on the module path; and how a tool ends, with the kernel
problems its guests showed."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))


def exit_status(problems):
    """Prints `problems` (kernel log lines, see vm.Guest.kernel_problems) if there are any;
    the tool's exit status: 1 if there were, else 0."""
    if problems:
        print("kernel problems:\n" + "\n".join(problems))
        return 1
    return 0
