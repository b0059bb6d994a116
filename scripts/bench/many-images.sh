#!/usr/bin/env bash
# Many small images: `labctl apply` of COUNT new 1 KiB images, served by nginx, into a fresh
# bucket, and the promotion (`apply --staged`) of the same images staged by a fan-out — beside
# `s5cmd cp` (its defaults) of the same files from disk into the same server — on s3s-fs and on
# Garage, with wall time and peak RSS. Then peak RSS by `--parallelism` (1, 4,
# 16, 64) for tiny images (COUNT_RSS of 1 KiB) and for large ones (four 48 MiB images, zstd).
# Writes its section of docs/benchmarks.md.
#
#   scripts/bench/many-images.sh [COUNT…]      (default 100 1000 10000; COUNT_RSS=2000)
#
# Each measurement gets a fresh server on a fresh ext4 loop volume (an emptied bucket is not a
# fresh one, and ext4 slows down creating files beside many it deleted moments before), so it
# runs as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100 1000 10000)
count_rss="${COUNT_RSS:-2000}"
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
chmod 755 "$work" # nginx's workers read the images as another user
trap 'jobs -p | xargs -r kill 2>/dev/null || true; sleep 0.5; umount "$work/store" 2> /dev/null || true; rm -rf "$work"' EXIT

need=()
command -v nginx > /dev/null || need+=(nginx)
command -v zstd > /dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
[ -x "$cache/s3s-fs/bin/s3s-fs" ] || cargo install s3s-fs@0.14.1 --features binary --locked --root "$cache/s3s-fs"
[ -x "$cache/garage/bin/garage" ] || cargo install garage@2.5.0 --locked --root "$cache/garage"
s5cmd=$(scripts/bench/s5cmd.sh)

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The images: tiny/NNNNNN.bin (1 KiB each, all different) and large/N.raw.zst (48 MiB each).
max=$(printf '%s\n' "${counts[@]}" "$count_rss" | sort -n | tail -1)
echo "== generating $max small images and four large ones"
python3 - "$work/srv" "$max" << 'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(d, "tiny"), exist_ok=True)
for i in range(n):
    with open(os.path.join(d, "tiny", f"{i:06}.bin"), "wb") as f:
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
  keepalive_requests 100000;
  server { listen 127.0.0.1:$http_port; root $work/srv; }
}
CONF
nginx -c "$work/nginx.conf"
trap 'nginx -c "$work/nginx.conf" -s stop 2> /dev/null || true; jobs -p | xargs -r kill 2>/dev/null || true; sleep 0.5; umount "$work/store" 2> /dev/null || true; rm -rf "$work"' EXIT
wait_port "$http_port"

# start_store s3s-fs|garage: a fresh server with a bucket `bench`; sets E2_* and AWS_*.
store_pid=""
start_store() {
  stop_store
  local s3_port data="$work/store"
  truncate -s 4G "$work/store.img"
  mkfs.ext4 -q -F "$work/store.img"
  mkdir -p "$data"
  mount -o loop "$work/store.img" "$data"
  s3_port=$(free_port)
  case $1 in
    s3s-fs)
      mkdir -p "$data/bench"
      "$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key bench \
        --secret-key benchsecret "$data" > /dev/null 2>&1 &
      store_pid=$!
      export E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret E2_REGION=us-east-1
      apply=("${apply_base[@]}")
      ;;
    garage)
      local rpc_port key=GK0123456789abcdef01234567
      local secret=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      rpc_port=$(free_port)
      cat > "$data/garage.toml" << TOML
metadata_dir = "$data/meta"
data_dir = "$data/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
TOML
      local g=("$cache/garage/bin/garage" -c "$data/garage.toml")
      "${g[@]}" server > /dev/null 2>&1 &
      store_pid=$!
      wait_port "$s3_port"
      local node
      for _ in $(seq 100); do node=$("${g[@]}" node id -q 2> /dev/null) && break; sleep 0.1; done
      "${g[@]}" layout assign -z dc1 -c 1G "${node%%@*}" > /dev/null
      "${g[@]}" layout apply --version 1 > /dev/null
      "${g[@]}" key import --yes "$key" "$secret" -n bench > /dev/null
      "${g[@]}" bucket create bench > /dev/null
      "${g[@]}" bucket allow --read --write --owner bench --key "$key" > /dev/null
      export E2_ACCESS_KEY=$key E2_SECRET_KEY=$secret E2_REGION=garage
      # Garage ignores If-None-Match: its documented flow is one apply at a time, unlocked.
      apply=("${apply_base[@]}" --lock=false)
      ;;
  esac
  export E2_ENDPOINT="http://127.0.0.1:$s3_port"
  export AWS_ACCESS_KEY_ID=$E2_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$E2_SECRET_KEY AWS_REGION=$E2_REGION
  wait_port "$s3_port"
}
stop_store() {
  if [ -n "$store_pid" ]; then
    kill "$store_pid" 2> /dev/null || true
    wait "$store_pid" 2> /dev/null || true
    store_pid=""
  fi
  if mountpoint -q "$work/store"; then umount "$work/store"; fi
  rm -f "$work/store.img"
}
export LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true

# manifest_tiny N, manifest_large: the manifest in $work/images.yaml.
manifest_tiny() {
  python3 - "$work/srv/tiny" "$1" "$http_port" > "$work/images.yaml" << 'PY'
import hashlib, os, sys
d, n, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:")
for i in range(n):
    sha = hashlib.sha256(open(os.path.join(d, f"{i:06}.bin"), "rb").read()).hexdigest()
    print(f"    - name: tiny-{i:06}\n      source: {{type: http, url: \"http://127.0.0.1:{port}/tiny/{i:06}.bin\", checksum: \"sha256:{sha}\"}}\n      destination: tiny/{i:06}.bin")
PY
}
manifest_large() {
  python3 - "$work/srv/large" "$http_port" > "$work/images.yaml" << 'PY'
import hashlib, os, subprocess, sys
d, port = sys.argv[1], sys.argv[2]
print("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:")
for i in range(4):
    z = open(os.path.join(d, f"{i}.raw.zst"), "rb").read()
    raw = subprocess.run(["zstd", "-dc"], input=z, capture_output=True, check=True).stdout
    print(f"    - name: large-{i}\n      source: {{type: http, url: \"http://127.0.0.1:{port}/large/{i}.raw.zst\", checksum: \"sha256:{hashlib.sha256(z).hexdigest()}\", decompress: zstd}}\n      destination: large/{i}.raw\n      validation: {{expected: \"sha256:{hashlib.sha256(raw).hexdigest()}\"}}")
PY
}

# measure COMMAND…: prints "SECONDS MIB" (wall time to the millisecond, peak RSS).
measure() {
  local start end
  start=$(date +%s%N)
  if ! /usr/bin/time -o "$work/time" -f "%M" "$@" > "$work/run.log" 2>&1; then
    echo "error: $* failed:" >&2
    tail -20 "$work/run.log" >&2
    exit 1
  fi
  end=$(date +%s%N)
  echo "$(((end - start) / 1000000))e-3 $(($(cat "$work/time") / 1024))"
}

apply_base=("$labctl" apply --auto-approve --manifest "$work/images.yaml" --store s3://bench)
apply=("${apply_base[@]}")

rows=()
floor_rows=()
for store in s3s-fs garage; do
  for n in "${counts[@]}"; do
    manifest_tiny "$n"
    if [ ! -d "$work/upload-$n" ]; then
      mkdir -p "$work/upload-$n"
      # sed, not head: head would stop reading, and pipefail would end the script.
      (cd "$work/srv/tiny" && find . -name '*.bin' | sort | sed -n "1,${n}p" | xargs cp -t "$work/upload-$n/")
    fi
    echo "== $store, $n images: s5cmd cp"
    start_store "$store"
    read -r s5_s s5_mib < <(measure "$s5cmd" --endpoint-url "$E2_ENDPOINT" cp "$work/upload-$n/" s3://bench/s5cmd/)
    echo "== $store, $n images: labctl apply"
    start_store "$store"
    read -r l_s l_mib < <(measure "${apply[@]}")
    echo "== $store, $n images: labctl plan (nothing to do)"
    read -r p_s _ < <(measure "$labctl" plan --manifest "$work/images.yaml" --store s3://bench)
    echo "== $store, $n images: the fan-out (plan, stage every leg, then the promotion is measured)"
    start_store "$store"
    "$labctl" plan --manifest "$work/images.yaml" --store s3://bench --out "$work/plan.json" \
      --matrix "$work/matrix.json" > /dev/null
    python3 -c '
import json, sys
for wave in json.load(open(sys.argv[1]))["waves"]:
    for leg in wave["matrix"]["include"]:
        print(leg["units"])
' "$work/matrix.json" | xargs -P 2 -I UNITS "$labctl" stage --manifest "$work/images.yaml" \
      --store s3://bench --unit UNITS "$work/plan.json" > /dev/null 2>&1
    read -r f_s f_mib < <(measure "${apply[@]}" "$work/plan.json" --staged)
    # What the store itself must do for that promotion, asked by s5cmd: a server-side copy, a
    # small object and two deletes an image (the images just promoted stand in for the blobs).
    echo "== $store, $n images: s5cmd doing a promotion's store work"
    s5=("$s5cmd" --endpoint-url "$E2_ENDPOINT")
    read -r copy_s _ < <(measure "${s5[@]}" cp "s3://bench/images/tiny/*" s3://bench/peer/copies/)
    read -r put_s _ < <(measure "${s5[@]}" cp "$work/upload-$n/" s3://bench/peer/records/)
    read -r rm_s _ < <(measure "${s5[@]}" rm "s3://bench/peer/copies/*")
    read -r rm2_s _ < <(measure "${s5[@]}" rm "s3://bench/peer/records/*")
    q_s=$(python3 -c "import sys; print(sum(map(float, sys.argv[1:])))" "$copy_s" "$put_s" "$rm_s" "$rm2_s")
    # What no promotion can do without, at the largest count: a copy, a record and the delete
    # of the blob an image, against s5cmd cp.
    if [ "$n" = "${counts[-1]}" ]; then
      floor_rows+=("$(python3 -c '
import sys
store, n, s5, copy, put, rm, rm2, f = sys.argv[1:]
need = float(copy) + float(put) + float(rm)
print(f"| {store} | {int(n):,} | {float(s5):.2f} s | {float(copy):.2f} s | {float(put):.2f} s | {float(rm):.2f} s | {float(rm2):.2f} s | {need:.2f} s | {need / float(s5):.1f}× | {float(f):.2f} s |")
' "$store" "$n" "$s5_s" "$copy_s" "$put_s" "$rm_s" "$rm2_s" "$f_s")")
      echo "${floor_rows[-1]}"
    fi
    rows+=("$(python3 -c '
import sys
store, n, s5, s5m, l, lm, p, f, fm, q = sys.argv[1:]
print(f"| {store} | {int(n):,} | {float(s5):.2f} s | {s5m} MiB | {float(l):.2f} s | {lm} MiB | {float(l) / float(s5):.1f}× | {float(f):.2f} s | {fm} MiB | {float(f) / float(s5):.1f}× | {float(q):.2f} s | {float(f) / float(q):.1f}× | {float(p):.2f} s |")
' "$store" "$n" "$s5_s" "$s5_mib" "$l_s" "$l_mib" "$p_s" "$f_s" "$f_mib" "$q_s")")
    echo "${rows[-1]}"
  done
done

rss_rows=()
for kind in tiny large; do
  row="| $kind"
  for p in 1 4 16 64; do
    if [ "$kind" = tiny ]; then manifest_tiny "$count_rss"; else manifest_large; fi
    echo "== peak RSS: $kind images, --parallelism $p"
    start_store s3s-fs
    read -r s mib < <(measure "${apply[@]}" --parallelism "$p")
    row+=" | $mib MiB ($(python3 -c "print(f'{$s:.1f}')") s)"
  done
  rss_rows+=("$row |")
  echo "${rss_rows[-1]}"
done
stop_store

version=$("$labctl" --version | cut -d' ' -f2)
{
  echo "## Many small images"
  echo
  echo "\`labctl apply\` of new 1 KiB images (each its own manifest entry, sha256 pinned), served by"
  echo "nginx on 127.0.0.1, into a fresh bucket — beside \`s5cmd cp\` (v2.3.0, its defaults) of the"
  echo "same files from disk into a fresh bucket of the same server, which neither downloads nor"
  echo "verifies anything nor writes a record per object. Then \`labctl plan\` of the applied manifest"
  echo "(nothing to do). And the promotion of a fan-out (\`labctl apply plan.json --staged\` after"
  echo "\`labctl plan --matrix\` and a \`labctl stage\` of every leg, two legs at a time; only the"
  echo "promotion is timed): server-side copies of the staged blobs, a record each, the index, then"
  echo "the promoted blobs and their results deleted. Beside it, the same store work asked by s5cmd"
  echo "in the same server: a server-side copy of each image, a 1 KiB object each, and the deletes of"
  echo "both (four \`s5cmd\` runs, one after another). On this project's 2-core machine, one run each,"
  echo "each server fresh on a fresh ext4 loop volume."
  echo
  echo "Produced by \`scripts/bench/many-images.sh ${counts[*]}\` on $(date -u +%Y-%m-%d), labctl $version."
  echo
  echo "| store | images | s5cmd cp | s5cmd peak RSS | labctl apply | peak RSS | ratio | promotion | peak RSS | ratio | s5cmd, a promotion's store work | ratio | labctl plan |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "What a promotion cannot do without, asked of the same servers by s5cmd at $(python3 -c 'import sys; print(f"{int(sys.argv[1]):,}")' "${counts[-1]}") images"
  echo "(the four runs above, each timed): a server-side copy of each image, a 1 KiB object each (the"
  echo "records), and the delete of each copied object (the blobs); the deletes of the 1 KiB objects"
  echo "stand for those of the stage results. The sum of the first three is the floor of a promotion"
  echo "on that server, whatever its client does."
  echo
  echo "| store | images | s5cmd cp | copies | 1 KiB objects | deletes of the copies | deletes of the objects | floor: copies + objects + deletes of the copies | floor vs s5cmd cp | labctl promotion |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${floor_rows[@]}"
  echo
  echo "### Peak RSS by \`--parallelism\`"
  echo
  echo "\`labctl apply\` into s3s-fs: tiny is ${count_rss} images of 1 KiB; large is four 48 MiB images"
  echo "(zstd, decompressed on the way). Wall time in brackets."
  echo
  echo "| images | 1 | 4 | 16 | 64 |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${rss_rows[@]}"
} | scripts/bench/section.sh many-images "$root/docs/benchmarks.md"
sed -n '/<!-- bench:many-images -->/,/<!-- \/bench:many-images -->/p' "$root/docs/benchmarks.md"
