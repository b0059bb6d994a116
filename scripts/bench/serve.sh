#!/usr/bin/env bash
# `labctl verify SYNCED --into SERVED` on a NAS-sized folder: a first run (every file copied and
# hashed), a run with nothing new (the identity cache: nothing hashed), and `--deep`, beside
# `sha256sum -c` over the same files. The synced files are sparse (holes read from no disk), so
# the figures compare hashing, copying and bookkeeping rather than the disk; the served copies
# are written out in full. Writes its section of docs/benchmarks.md.
#
#   scripts/bench/serve.sh [TOTAL_GIB] [FILES]     (default 20 GiB in 1,000 files)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
total_gib="${1:-20}"
files="${2:-1000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

echo "== generating ${files} sparse files, ${total_gib} GiB in all"
synced="$work/images"
served="$work/boot"
per=$((total_gib * 1024 * 1024 * 1024 / files))
python3 - "$synced" "$files" "$per" <<'PY'
# Each file: 16 bytes that make it unique, then a hole up to its size. Its sha256 is computed
# here (OpenSSL's, fast) by feeding the same bytes; the list and index.json are written as apply
# writes them.
import hashlib, json, os, sys
d, files, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
zeros = bytes(1 << 20)
entries = []
for i in range(files):
    path = f"talos/v{i // 100}/image-{i:04}.raw"
    p = os.path.join(d, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    head = i.to_bytes(16, "big")
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(per)
    h = hashlib.sha256(head)
    left = per - len(head)
    while left > 0:
        n = min(left, len(zeros))
        h.update(zeros[:n])
        left -= n
    sha = h.hexdigest()
    entries.append({"name": path, "path": path, "size": per, "sha256": sha,
                    "checksum": "sha256:" + sha})
entries.sort(key=lambda e: e["path"])
with open(os.path.join(d, "SHA256SUMS"), "w") as f:
    f.writelines(f"{e['sha256']}  {e['path']}\n" for e in entries)
with open(os.path.join(d, "index.json"), "w") as f:
    json.dump({"format_version": "1.1", "generated_at": "2026-12-01T00:00:00Z",
               "labctl_version": "0.1.0", "images": entries}, f)
PY

measure() { # label command…
  local label=$1
  shift
  local code=0
  /usr/bin/time -o "$work/time" -f "%e %M" "$@" > "$work/run.json" 2> "$work/run.log" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "error: $label failed (exit $code):" >&2
    tail -20 "$work/run.log" >&2
    exit 1
  fi
  read -r secs kib < "$work/time"
  python3 - "$work/run.json" "$label" "$secs" "$kib" "$total_gib" <<'PY'
import json, sys
path, label, secs, kib, total_gib = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    report = json.load(open(path))
    hashed, copied = report["bytes_hashed"], report["bytes_copied"]
except (OSError, ValueError, KeyError):
    hashed, copied = total_gib * 2**30, 0        # sha256sum: every byte, nothing copied
rate = f"{hashed / 2**20 / max(secs, 0.01):.0f} MiB/s" if hashed else "—"
print(f"| {label} | {secs:.2f} s | {hashed / 2**30:.1f} GiB | {copied / 2**30:.1f} GiB | {rate} | {kib // 1024} MiB |")
PY
}

rows=()
echo "== sha256sum -c"
rows+=("$(cd "$synced" && measure 'sha256sum -c SHA256SUMS' sha256sum --quiet -c SHA256SUMS)")
echo "== first run"
rows+=("$(measure 'verify --into, first run' "$labctl" verify "$synced" --into "$served" --json --jobs 2)")
echo "== no change"
rows+=("$(measure 'verify --into, nothing new' "$labctl" verify "$synced" --into "$served" --json --jobs 2)")
echo "== deep"
rows+=("$(measure 'verify --into --deep' "$labctl" verify "$synced" --into "$served" --json --deep --jobs 2)")

{
  echo "## Filling the served folder"
  echo
  echo "\`labctl verify SYNCED --into SERVED\` on ${files} files, ${total_gib} GiB in all (sparse synced"
  echo "files: 16 distinct bytes, then a hole), on this project's 2-core machine, served folder on the"
  echo "same ext4-like volume (no reflinks: every byte is copied). The first run hashes each file once,"
  echo "while copying it; a run with nothing new only stats the files (the identity cache) and hashes"
  echo "nothing — on a NAS this is the run the Task Scheduler repeats every five minutes; \`--deep\`"
  echo "rehashes every served file. The rate is bytes hashed over wall time."
  echo
  echo "Produced by \`scripts/bench/serve.sh ${total_gib} ${files}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| run | wall time | hashed | copied | rate | peak RSS |"
  echo "|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh serve "$root/docs/benchmarks.md"
sed -n '/<!-- bench:serve -->/,/<!-- \/bench:serve -->/p' "$root/docs/benchmarks.md"
