#!/usr/bin/env bash
# labctl publishing a zstd image, and the raw image, beside the store's own ingest of the same
# (decompressed) bytes:
# how much of labctl's time is the store's. A generated image (base64 text of random bytes,
# zstd -3) is served over HTTP; labctl downloads, decompresses, verifies both checksums and
# uploads it; `s5cmd cp` (its defaults) and boto3's multipart upload_file (8 MiB parts, 4 at a
# time, like labctl) upload the decompressed file from disk and check nothing. Three runs each, best and peak RSS, into
# docs/benchmarks.md. Run on demand: scripts/bench/ingest.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
size_mib="${1:-1024}"
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
trap 'jobs -p | xargs -r kill 2>/dev/null || true; rm -rf "$work"' EXIT
python="$cache/moto-venv/bin/python"
if [ ! -x "$python" ] || [ ! -x "$cache/s3s-fs/bin/s3s-fs" ]; then
  echo "error: run scripts/test first (s3s-fs, the venv with boto3)" >&2
  exit 1
fi
command -v zstd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd; }

s5cmd=$(scripts/bench/s5cmd.sh)

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

echo "== generating a ${size_mib} MiB image"
mkdir -p "$work/srv"
head -c $((size_mib * 1024 * 1024 * 3 / 4)) /dev/urandom | base64 -w 76 > "$work/image.raw"
zstd -q -T2 -3 "$work/image.raw" -o "$work/srv/image.raw.zst"
raw_sum=$(sha256sum "$work/image.raw" | cut -d' ' -f1)
zst_sum=$(sha256sum "$work/srv/image.raw.zst" | cut -d' ' -f1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
(cd "$work/srv" && exec python3 -m http.server "$http_port" --bind 127.0.0.1 >/dev/null 2>&1) &
# The raw image is served as it is too (a hard link: no second gigabyte on disk).
ln "$work/image.raw" "$work/srv/image.raw"
cat > "$work/raw.yaml" <<YAML
apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  images:
    - name: r
      source: {type: http, url: "http://127.0.0.1:$http_port/image.raw", checksum: "sha256:$raw_sum"}
      destination: bench/r.raw
YAML
cat > "$work/images.yaml" <<YAML
apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  images:
    - name: z
      source: {type: http, url: "http://127.0.0.1:$http_port/image.raw.zst", checksum: "sha256:$zst_sum", decompress: zstd}
      destination: bench/z.raw
      validation: {expected: "sha256:$raw_sum"}
YAML
cat > "$work/ingest.py" <<'PY'
import sys, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="bench",
                  aws_secret_access_key="benchsecret", region_name="us-east-1")
s3.upload_file(sys.argv[2], "bench", "ingest.raw",
               Config=TransferConfig(multipart_chunksize=8 * 1024 * 1024, max_concurrency=4))
PY

fresh_store() { # -> endpoint
  local port
  port=$(free_port)
  rm -rf "$work/s3" && mkdir -p "$work/s3/bench"
  "$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
  echo $! > "$work/s3.pid"
  sleep 1
  echo "http://127.0.0.1:$port"
}

best() { # label command… (each run against a fresh store, endpoint in $E2_ENDPOINT)
  local label=$1 secs kib best_s="" peak=0
  shift
  for _ in 1 2 3; do
    E2_ENDPOINT=$(fresh_store)
    export E2_ENDPOINT
    /usr/bin/time -o "$work/time" -f "%e %M" "$@" > "$work/run.log" 2>&1 \
      || { tail -20 "$work/run.log" >&2; exit 1; }
    kill "$(cat "$work/s3.pid")"
    read -r secs kib < "$work/time"
    if [ -z "$best_s" ] || python3 -c "import sys; sys.exit(0 if $secs < $best_s else 1)"; then best_s=$secs; fi
    [ "$kib" -gt "$peak" ] && peak=$kib
  done
  printf '| %s | %s s | %s MiB |\n' "$label" "$best_s" "$((peak / 1024))"
}

export E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true
echo "== labctl apply (zstd)"
labctl_row=$(best "labctl apply: download, zstd -d, both sha256, upload" \
  sh -c "\"$labctl\" apply --auto-approve --manifest \"$work/images.yaml\" --store s3://bench")
echo "== labctl apply (raw)"
raw_row=$(best "labctl apply: download raw, sha256, upload" \
  sh -c "\"$labctl\" apply --auto-approve --manifest \"$work/raw.yaml\" --store s3://bench")
echo "== store ingest alone (s5cmd cp of the decompressed bytes)"
s5cmd_row=$(AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
  best "store ingest alone: s5cmd cp, no checks" \
  sh -c "\"$s5cmd\" --endpoint-url \"\$E2_ENDPOINT\" cp \"$work/image.raw\" s3://bench/ingest.raw")
echo "== store ingest alone (boto3 upload_file of the decompressed bytes)"
ingest_row=$(best "store ingest alone: boto3 upload_file, no checks" \
  sh -c "\"$python\" \"$work/ingest.py\" \"\$E2_ENDPOINT\" \"$work/image.raw\"")

{
  echo "## Publishing zstd and raw beside the store's own ingest"
  echo
  echo "A ${size_mib} MiB image (base64 text of random bytes) published by labctl from a local HTTP"
  echo "server into a fresh s3s-fs, compressed (zstd -3) and as it is, beside the store's ingest of"
  echo "the same bytes from disk into a fresh s3s-fs: \`s5cmd cp\` (v2.3.0, its defaults: 50 MB parts, 5 in"
  echo "flight) and boto3's upload_file (8 MiB parts, 4 in flight, as labctl). Best of three; peak"
  echo "RSS is the largest of the three. labctl's part uploads are sent with an unsigned payload (the"
  echo "bytes are hashed end to end already; TLS protects them in transit), as boto3 and s5cmd do."
  echo
  echo "Produced by \`scripts/bench/ingest.sh ${size_mib}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| run | wall time | peak RSS |"
  echo "|---|---:|---:|"
  echo "$labctl_row"
  echo "$raw_row"
  echo "$s5cmd_row"
  echo "$ingest_row"
} | scripts/bench/section.sh ingest "$root/docs/benchmarks.md"
sed -n '/bench:ingest/,/\/bench:ingest/p' "$root/docs/benchmarks.md"
