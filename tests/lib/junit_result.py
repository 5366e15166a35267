#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Print "RESULT <kind> <passed> <failed>" from a pytest JUnit XML report.

Usage: junit_result.py REPORT[,REPORT...] KIND [TEST_FILE...]: the cases of all the reports
(pytest runs that went in parallel) are counted together; the test files named are left out.

Errors (a fixture that failed, e.g. a guest that did not boot) and skipped tests count as
failures: a check that did not run did not pass."""

import sys
import xml.etree.ElementTree as ET


def main():
    path, kind = sys.argv[1], sys.argv[2]
    # Test files whose cases are counted elsewhere (make check counts the KUnit cases, not
    # the per-suite tests of test_kunit.py).
    exclude = tuple(sys.argv[3:])
    cases = []
    for one in path.split(","):
        try:
            cases += ET.parse(one).getroot().iter("testcase")
        except (OSError, ET.ParseError) as e:
            print(f"no JUnit report: {e}")
            return 1
    passed = failed = 0
    for case in cases:
        bad = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        name = f"{case.get('classname')}.{case.get('name')}"
        if exclude and case.get("classname", "").split(".")[-1] in exclude:
            continue
        if bad:
            failed += 1
            print(f"FAIL {kind} {name} ({', '.join(bad)})")
        else:
            passed += 1
            print(f"PASS {kind} {name}")
    print(f"RESULT {kind} {passed} {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
