#!/usr/bin/env bash
# `labctl verify` beside `sha256sum -c` on the same synced-folder-like directory: generated files
# of random bytes, read from the page cache (warmed first), so the figures compare hashing and
# I/O handling rather than the disk. Writes its section of docs/benchmarks.md.
#
#   scripts/bench/verify.sh [TOTAL_MIB] [FILES]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
total_mib="${1:-2048}"
files="${2:-8}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

echo "== generating ${files} files, ${total_mib} MiB in all"
dir="$work/images"
mkdir -p "$dir/talos"
per=$((total_mib / files))
for i in $(seq 1 "$files"); do
  head -c $((per * 1024 * 1024)) /dev/urandom > "$dir/talos/image-$i.raw"
done
(cd "$dir" && find . -type f -name '*.raw' | sed 's|^\./||' | sort | xargs sha256sum > SHA256SUMS)
# The index.json labctl writes beside it (verify checks the two agree).
python3 - "$dir" <<'PY'
import json, os, sys
d = sys.argv[1]
images = []
for line in open(os.path.join(d, "SHA256SUMS")):
    sha, path = line.rstrip("\n").split("  ", 1)
    images.append({"name": path, "path": path, "size": os.path.getsize(os.path.join(d, path)),
                   "sha256": sha, "checksum": "sha256:" + sha})
json.dump({"format_version": "1.0", "generated_at": "2026-11-26T00:00:00Z",
           "labctl_version": "0.1.0", "images": images}, open(os.path.join(d, "index.json"), "w"))
PY
# Two halves of the list, for a parallel coreutils baseline.
head -n $((files / 2)) "$dir/SHA256SUMS" > "$work/first"
tail -n +$((files / 2 + 1)) "$dir/SHA256SUMS" > "$work/second"
cat "$dir"/talos/*.raw > /dev/null   # warm the page cache

measure() { # label command…
  local label=$1
  shift
  if ! (cd "$dir" && /usr/bin/time -o "$work/time" -f "%e %M" "$@" > "$work/run.log" 2>&1); then
    echo "error: $label failed:" >&2
    tail -20 "$work/run.log" >&2
    exit 1
  fi
  read -r secs kib < "$work/time"
  printf '| %s | %s s | %s MiB |\n' "$label" "$secs" "$((kib / 1024))"
}

rows=()
echo "== sha256sum -c"
rows+=("$(measure 'sha256sum -c SHA256SUMS' sha256sum -c SHA256SUMS)")
echo "== sha256sum -c, two halves in parallel"
rows+=("$(measure 'sha256sum -c, two halves in parallel' bash -c "sha256sum -c $work/first & sha256sum -c $work/second & wait")")
for jobs in 1 2; do
  echo "== labctl verify --jobs $jobs"
  rows+=("$(measure "labctl verify --jobs $jobs" "$labctl" verify "$dir" --jobs "$jobs")")
done

{
  echo "## Verifying a synced copy"
  echo
  echo "\`labctl verify\` beside coreutils on ${files} files of random bytes, ${total_mib} MiB in all, read"
  echo "from the page cache (warmed first), on this project's 2-core machine. labctl also walks"
  echo "the directory for unlisted files; memory is one 256 KiB buffer per job. The gap per core is"
  echo "the hash implementation: labctl's sha2 uses the CPU's SHA extensions ($(grep -q -m1 sha_ni /proc/cpuinfo && echo present || echo absent) here), Debian's"
  echo "$(sha256sum --version | head -1 | sed 's/^sha256sum //') does not."
  echo
  echo "Produced by \`scripts/bench/verify.sh ${total_mib} ${files}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| run | wall time | peak RSS |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh verify "$root/docs/benchmarks.md"
cat "$root/docs/benchmarks.md"
