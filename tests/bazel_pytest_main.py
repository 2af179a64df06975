"""Runs one pytest file as a Bazel `py_test` (the `main` of every target in tests/BUILD).

Bazel runs this from the runfiles tree with the test file(s) as arguments (`args` in
tests/BUILD); pytest reads its settings from pyproject.toml there. The JUnit XML goes
where Bazel asks for it (XML_OUTPUT_FILE), so test.xml lists every test case.
"""

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    args = [*argv, "-p", "no:cacheprovider", "-q", "-rs"]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append(f"--junitxml={xml}")
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
