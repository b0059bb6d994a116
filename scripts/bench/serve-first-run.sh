#!/usr/bin/env bash
# The first run of `labctl verify SYNCED --into SERVED` — every file copied, hashed, made durable,
# renamed into place and recorded — beside the pair a user would script instead: `cp -r` of the
# synced folder followed by `sha256sum -c` of the copy (which neither makes the copy durable nor
# keeps a reader from seeing a half-copied file). Many 1 KiB files (the cost per file: state,
# renames, syncs) and one large file of random bytes (the cost per byte). Writes its section of
# docs/benchmarks.md.
#
#   scripts/bench/serve-first-run.sh [LARGE_GIB] [COUNT…]     (default 4 GiB; 1000 10000 50000)
#
# Wall time is measured to the millisecond (GNU time's 10 ms would round a 30 ms run by a third),
# and the many-file rows are the median of REPEAT runs of each side (default 3), each on its own
# fresh volume.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
large_gib="${1:-4}"
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 10000 50000)
repeat="${REPEAT:-3}"
work="$(mktemp -d)"
# Measurements run in subshells (their output is piped to `median`): whatever is still mounted
# under $work is found, not remembered.
cleanup() {
  findmnt -rn -o TARGET | grep "^$work/" | while read -r m; do umount "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

# generate DIR small COUNT | generate DIR large GIB: files, SHA256SUMS and index.json as apply
# writes them.
generate() {
  python3 - "$@" <<'PY'
import hashlib, json, os, random, sys
d, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
entries = []
def add(path, sha, size):
    entries.append({"name": path, "path": path, "size": size, "sha256": sha,
                    "checksum": "sha256:" + sha})
if kind == "small":
    for i in range(n):
        path = f"pxe/d{i // 100:04}/f{i:06}.bin"
        body = (f"file {i}\n".encode() + b"." * 1024)[:1024]
        p = os.path.join(d, path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(body)
        add(path, hashlib.sha256(body).hexdigest(), len(body))
else:
    path, size, rng, h = "harvester/disk.raw", n << 30, random.Random(7), hashlib.sha256()
    os.makedirs(os.path.join(d, "harvester"), exist_ok=True)
    with open(os.path.join(d, path), "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 8 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    add(path, h.hexdigest(), size)
entries.sort(key=lambda e: e["path"])
with open(os.path.join(d, "SHA256SUMS"), "w") as f:
    f.writelines(f"{e['sha256']}  {e['path']}\n" for e in entries)
with open(os.path.join(d, "index.json"), "w") as f:
    json.dump({"format_version": "1.1", "generated_at": "2026-12-01T00:00:00Z",
               "labctl_version": "0.1.0", "images": entries}, f)
PY
}

# timed LABEL COMMAND…: prints "SECONDS KIB" (wall time to the millisecond, peak RSS).
timed() {
  local label=$1 start end
  shift
  start=$(date +%s%N)
  if ! /usr/bin/time -o "$work/time" -f "%M" "$@" > "$work/out" 2> "$work/err"; then
    echo "error: $label failed:" >&2
    tail -20 "$work/err" >&2
    exit 1
  fi
  end=$(date +%s%N)
  echo "$(((end - start) / 1000000))e-3 $(cat "$work/time")"
}

# median: of "SECONDS KIB" lines on stdin, the line of the median time.
median() {
  sort -g | awk '{ line[NR] = $0 } END { print line[int((NR + 1) / 2)] }'
}

# fresh_volume NAME GIB: a new ext4 filesystem (a sparse loop image) mounted at $work/NAME. Each
# run gets one with the synced folder just written to it: ext4 slows down creating files beside
# many it deleted moments ago, which would favour whichever run went first.
fresh_volume() {
  local name=$1 gib=$2
  truncate -s "${gib}G" "$work/$name.img"
  mkfs.ext4 -q -F "$work/$name.img"
  mkdir -p "$work/$name"
  mount -o loop "$work/$name.img" "$work/$name"
}

rows=()
# base_run KIND N GIB, labctl_run KIND N GIB: one measurement each, on a fresh volume.
base_run() {
  local v="base-$1-$2"
  fresh_volume "$v" "$3"
  generate "$work/$v/synced" "$1" "$2"
  sync
  timed "cp -r + sha256sum -c" bash -c \
    "cp -r '$work/$v/synced' '$work/$v/copy' && cd '$work/$v/copy' && sha256sum --quiet --strict -c SHA256SUMS"
  umount "$work/$v" && rm -f "$work/$v.img"
}
labctl_run() {
  local v="labctl-$1-$2"
  fresh_volume "$v" "$3"
  generate "$work/$v/synced" "$1" "$2"
  sync
  timed "labctl verify --into" "$labctl" verify "$work/$v/synced" --into "$work/$v/served" --json
  umount "$work/$v" && rm -f "$work/$v.img"
  python3 - "$work/out" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
assert r["complete"], "the first run did not complete"
PY
}

bench() { # LABEL KIND N
  local label=$1 kind=$2 n=$3 gib runs=1 i
  if [ "$kind" = small ]; then gib=$((n / 5000 + 2)) runs=$repeat; else gib=$((n * 2 + 2)); fi
  echo "== $label: cp -r, sha256sum -c ($runs runs)"
  read -r base_s base_kib < <(for ((i = 0; i < runs; i++)); do base_run "$kind" "$n" "$gib"; done | median)
  echo "== $label: labctl verify --into ($runs runs)"
  read -r labctl_s labctl_kib < <(for ((i = 0; i < runs; i++)); do labctl_run "$kind" "$n" "$gib"; done | median)
  rows+=("$(python3 -c '
import sys
label, b, bk, l, lk = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"| {label} | {b:.3f} s | {l:.3f} s | {l / max(b, 0.001):.2f}× | {lk // 1024} MiB |")
' "$label" "$base_s" "$base_kib" "$labctl_s" "$labctl_kib")")
  echo "${rows[-1]}"
}

for n in "${counts[@]}"; do
  bench "$(python3 -c "print(f'{$n:,}')") files of 1 KiB" small "$n"
done
bench "one file of ${large_gib} GiB" large "$large_gib"

{
  echo "## Filling the served folder: a first run"
  echo
  echo "The first run of \`labctl verify SYNCED --into SERVED\` (nothing served yet: every file"
  echo "copied, hashed, made durable, renamed into place and recorded in the served folder's state)"
  echo "beside \`cp -r\` of the synced folder followed by \`sha256sum -c\` of the copy, on this"
  echo "project's 2-core machine (each on a fresh ext4 loop volume holding just the synced folder;
no reflinks). The pair neither makes the copy durable nor"
  echo "keeps a reader from seeing a half-copied file; labctl does both. Files are placed in"
  echo "batches: one \`syncfs\` for a batch's bytes, one journal append for its claims, renames, one"
  echo "\`syncfs\` for the new names, one journal append for the results; the state file is written"
  echo "whole once at the end. Peak RSS is labctl's. Wall time to the millisecond; each many-file"
  echo "row is the median of ${repeat} runs of each side."
  echo
  echo "Produced by \`scripts/bench/serve-first-run.sh ${large_gib} ${counts[*]}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| folder | cp -r + sha256sum -c | labctl first run | ratio | labctl peak RSS |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh serve-first-run "$root/docs/benchmarks.md"
sed -n '/<!-- bench:serve-first-run -->/,/<!-- \/bench:serve-first-run -->/p' "$root/docs/benchmarks.md"
