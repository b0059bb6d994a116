#!/usr/bin/env bash
# Peak RSS of `labctl apply` with a multi-GiB xz image: one 3 GiB image compressed with `xz -9`
# (a 64 MiB dictionary) or `xz -6` (8 MiB, xz's default) alone, and the `xz -9` one beside 600
# tiny images and four 48 MiB zstd images at --parallelism 64. nginx serves the images; each run
# gets a fresh s3s-fs on a fresh ext4 loop volume (so it runs as root). Writes its section of
# docs/benchmarks.md.
#
#   scripts/bench/memory-mix.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
chmod 755 "$work" # nginx's workers read the images as another user
cleanup() {
  nginx -c "$work/nginx.conf" -s stop 2> /dev/null || true
  jobs -p | xargs -r kill 2> /dev/null || true
  sleep 0.5
  umount "$work/store" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

need=()
command -v nginx > /dev/null || need+=(nginx)
command -v zstd > /dev/null || need+=(zstd)
command -v xz > /dev/null || need+=(xz-utils)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
[ -x "$cache/s3s-fs/bin/s3s-fs" ] || cargo install s3s-fs@0.14.1 --features binary --locked --root "$cache/s3s-fs"

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "== generating the images (two 3 GiB xz images take a minute or two)"
mkdir -p "$work/srv"
head -c 3G /dev/zero | xz -9 -T1 > "$work/srv/big9.raw.xz"
head -c 3G /dev/zero | xz -6 -T1 > "$work/srv/big6.raw.xz"
zero=$(head -c 3G /dev/zero | sha256sum | cut -d' ' -f1)
python3 - "$work/srv" << 'PY'
import os, sys
d = sys.argv[1]
os.makedirs(os.path.join(d, "tiny"), exist_ok=True)
for i in range(600):
    with open(os.path.join(d, "tiny", f"{i:03}.bin"), "wb") as f:
        f.write((f"image {i}\n".encode() + b"." * 1024)[:1024])
os.makedirs(os.path.join(d, "large"), exist_ok=True)
for i in range(4):
    with open(os.path.join(d, "large", f"{i}.raw"), "wb") as f:
        f.write(os.urandom(48 << 20))
PY
for i in 0 1 2 3; do zstd -q -1 --rm "$work/srv/large/$i.raw"; done

http_port=$(free_port)
cat > "$work/nginx.conf" << CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$http_port; root $work/srv; }
}
CONF
nginx -c "$work/nginx.conf"
wait_port "$http_port"

# manifest NAME…: the manifest of those images in $work/images.yaml (big9, big6, tiny, large).
manifest() {
  python3 - "$work/srv" "$http_port" "$zero" "$@" > "$work/images.yaml" << 'PY'
import hashlib, os, subprocess, sys
d, port, zero, kinds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
url = lambda rel: f"http://127.0.0.1:{port}/{rel}"
print("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:")
for kind in kinds:
    if kind in ("big9", "big6"):
        print(f"    - name: {kind}\n      source: {{type: http, url: \"{url(kind + '.raw.xz')}\", checksum: \"sha256:{sha(os.path.join(d, kind + '.raw.xz'))}\", decompress: xz}}\n      destination: {kind}.raw\n      validation: {{expected: \"sha256:{zero}\"}}")
    elif kind == "tiny":
        for i in range(600):
            print(f"    - name: tiny-{i:03}\n      source: {{type: http, url: \"{url(f'tiny/{i:03}.bin')}\", checksum: \"sha256:{sha(os.path.join(d, 'tiny', f'{i:03}.bin'))}\"}}\n      destination: tiny/{i:03}.bin")
    elif kind == "large":
        for i in range(4):
            z = os.path.join(d, "large", f"{i}.raw.zst")
            raw = subprocess.run(["zstd", "-dc", z], capture_output=True, check=True).stdout
            print(f"    - name: large-{i}\n      source: {{type: http, url: \"{url(f'large/{i}.raw.zst')}\", checksum: \"sha256:{sha(z)}\", decompress: zstd}}\n      destination: large/{i}.raw\n      validation: {{expected: \"sha256:{hashlib.sha256(raw).hexdigest()}\"}}")
PY
}

# measure ARGS…: a fresh s3s-fs, then `labctl apply ARGS…`; prints "seconds MiB".
store_pid=""
measure() {
  local s3_port data="$work/store"
  truncate -s 8G "$work/store.img"
  mkfs.ext4 -q -F "$work/store.img"
  mkdir -p "$data"
  mount -o loop "$work/store.img" "$data"
  mkdir -p "$data/bench"
  s3_port=$(free_port)
  "$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key bench \
    --secret-key benchsecret "$data" > /dev/null 2>&1 &
  store_pid=$!
  wait_port "$s3_port"
  local start end
  start=$(date +%s.%N)
  E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret E2_REGION=us-east-1 \
    E2_ENDPOINT="http://127.0.0.1:$s3_port" LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true \
    /usr/bin/time -f 'peak-rss-kib=%M' -o "$work/time.txt" \
    "$labctl" apply --auto-approve --manifest "$work/images.yaml" --store s3://bench "$@" \
    > "$work/apply.log" 2>&1 || { cat "$work/apply.log" >&2; exit 1; }
  end=$(date +%s.%N)
  kill "$store_pid" 2> /dev/null || true
  wait "$store_pid" 2> /dev/null || true
  umount "$data"
  rm -f "$work/store.img"
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}', int(open(sys.argv[3]).read().split('=')[1]) // 1024)" \
    "$start" "$end" "$work/time.txt"
}

rows=()
run() {
  local what=$1
  shift
  echo "== $what"
  read -r s mib < <(measure "$@")
  rows+=("| $what | $mib MiB | $s s |")
  echo "${rows[-1]}"
}
manifest big9
run "one 3 GiB image, \`xz -9\` (64 MiB dictionary)"
manifest big6
run "one 3 GiB image, \`xz -6\` (8 MiB dictionary)"
manifest tiny large big9
run "600 tiny, four 48 MiB zstd and the \`xz -9\` image, --parallelism 64" --parallelism 64

version=$("$labctl" --version | cut -d' ' -f2)
{
  echo "## Memory with a multi-GiB xz image"
  echo
  echo "Peak RSS of \`labctl apply\` into a fresh s3s-fs (fresh ext4 loop volume), images served"
  echo "by nginx on 127.0.0.1. The 3 GiB images decompress to zeros: the decoder's dictionary is"
  echo "filled all the same. A decoder's window is held from the run's memory budget; an \`xz -9\`"
  echo "dictionary goes alone among windows and its decoder's parts go one at a time."
  echo
  echo "Produced by \`scripts/bench/memory-mix.sh\` on $(date -u +%Y-%m-%d), labctl $version."
  echo
  echo "| images | peak RSS | wall time |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh memory-mix "$root/docs/benchmarks.md"
sed -n '/<!-- bench:memory-mix -->/,/<!-- \/bench:memory-mix -->/p' "$root/docs/benchmarks.md"
