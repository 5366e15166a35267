# SPDX-License-Identifier: GPL-2.0
"""KUnit results of the virtio-rs modules, read by the kernel's own KTAP parser.

The suites a module declares (``#[kunit_tests(name)]`` in its sources) run when its test
flavour loads and leave their KTAP in ``/sys/kernel/debug/kunit/<suite>/results``.  This
module finds the declared suites and hands each suite's KTAP to
``tools/testing/kunit/kunit_parser.py`` of the kernel tree the modules were built against, so
that nested subtests, skips and a suite that crashed half-way are counted exactly as
``kunit.py`` counts them.  Used by ``tests/kunit/run.py``, the integration tests and the
stress tests.
"""

import glob
import importlib
import os
import re
import sys

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE_DECL = re.compile(r"#\[kunit_tests\((\w+)\)\]")


def declared_suites():
    """Every KUnit suite the module sources declare, sorted."""
    suites = []
    for path in glob.glob(os.path.join(TOP, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, TOP)
        if rel.startswith("tests/") or "/target/" in path:
            continue
        with open(path) as f:
            suites += SUITE_DECL.findall(f.read())
    return sorted(set(suites))


def _parser():
    """The kernel's kunit_parser module, from the tree in $KDIR (an O= build directory
    links its source tree as ``source``)."""
    kdir = os.environ.get("KDIR", "")
    for base in (os.path.join(kdir, "source"), kdir):
        d = os.path.join(base, "tools", "testing", "kunit")
        if os.path.exists(os.path.join(d, "kunit_parser.py")):
            if d not in sys.path:
                sys.path.insert(0, d)
            return importlib.import_module("kunit_parser"), importlib.import_module("kunit_printer")
    raise RuntimeError(f"no tools/testing/kunit/kunit_parser.py under KDIR={kdir!r}")


class Case:
    """One test case of a suite: its name, the parser's status and what the log says."""

    def __init__(self, name, status, log):
        self.name = name
        self.status = status
        self.log = log

    @property
    def ok(self):
        # A skipped case did not pass: make check counts what ran and passed.
        return self.status == "SUCCESS"


def parse_suite(suite, text):
    """(cases, errors) of one suite's KTAP: every leaf test with its status, and the
    parser's own error count (a plan that promised more cases than reported, a line it could
    not parse).  A suite that crashed leaves its missing cases as errors."""
    parser, printer = _parser()
    top = parser.parse_run_tests(text.splitlines(), printer.null_printer)
    cases = []

    def leaves(test, prefix):
        if not test.subtests:
            # A case the plan promised but the suite never reported (it crashed) has no name.
            name = test.name or f"<case {len(cases) + 1}, not reported>"
            cases.append(Case(prefix + name, test.status.name, test.log))
            return
        for sub in test.subtests:  # a parameterised case: its parameters are the leaves
            leaves(sub, prefix + test.name + ".")

    # The results file holds the suite itself, as the only test of a KTAP document, or
    # (older kernels) only its cases: find the suite node either way.
    node = top
    if len(top.subtests) == 1 and top.subtests[0].name == suite:
        node = top.subtests[0]
    for sub in node.subtests:
        leaves(sub, "")
    return cases, top.counts.errors


def run_suites(guest, suites=None, timeout=900):
    """Collect every suite's results in `guest` (whose test-flavour modules are loaded).
    Returns [(suite, cases, errors, text)]; a suite with no results has no cases."""
    out = []
    for suite in suites or declared_suites():
        d = f"/sys/kernel/debug/kunit/{suite}"
        # Suites run when their module loads (CONFIG_KUNIT_AUTORUN_ENABLED); on a kernel
        # built without autorun, run them through debugfs.
        rc, text = guest.run(f"[ -s {d}/results ] || echo 1 > {d}/run 2>/dev/null; "
                             f"cat {d}/results", check=False, timeout=timeout)
        if rc != 0:
            out.append((suite, [], 0, text))
            continue
        cases, errors = parse_suite(suite, text)
        out.append((suite, cases, errors, text))
    return out


def report(results, kind="kunit"):
    """Print one line per case and return (passed, failed); a suite with no case or with
    parser errors counts one failure more."""
    passed = failed = 0
    for suite, cases, errors, text in results:
        if not cases:
            print(f"FAIL {kind} {suite}: no results (suite did not run)")
            failed += 1
            continue
        for c in cases:
            word = {"SUCCESS": "PASS", "SKIPPED": "SKIP"}.get(c.status, "FAIL")
            print(f"{word} {kind} {suite}.{c.name}" + ("" if c.ok else f" ({c.status})"))
            if c.ok:
                passed += 1
            else:
                failed += 1
                for line in c.log:
                    if "ASSERTION FAILED" in line or "Expected" in line:
                        print(f"    {line.strip()}")
        if errors:
            print(f"FAIL {kind} {suite}: the KTAP parser found {errors} error(s):\n{text}")
            failed += 1
    return passed, failed
