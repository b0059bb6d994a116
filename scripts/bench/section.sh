#!/usr/bin/env bash
# Replaces one benchmark's section of docs/benchmarks.md (between `<!-- bench:NAME -->` and
# `<!-- /bench:NAME -->`) with standard input, appending the section when it is not there yet,
# so each script rewrites only its own figures.
#
#   some-report | scripts/bench/section.sh NAME docs/benchmarks.md
set -euo pipefail
name=$1
file=$2
body=$(cat)
python3 - "$name" "$file" "$body" <<'PY'
import pathlib, re, sys
name, path, body = sys.argv[1:4]
p = pathlib.Path(path)
text = p.read_text() if p.exists() else "# Benchmarks\n"
start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
section = f"{start}\n{body.rstrip()}\n{end}"
pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text)
else:
    text = text.rstrip() + "\n\n" + section + "\n"
p.write_text(text)
PY
