#!/usr/bin/env bash
# Four slow downloads (an HTTP server sending each connection at a fixed rate) into a local
# s3s-fs: one `labctl apply` (its default --parallelism 4, and --parallelism 1 as on a runner
# whose disk or CPU allows one image at a time) beside the fan-out — four `labctl stage`
# processes started together, then `labctl apply --staged`. Records the wall time and how long
# .labctl/lock.json existed in each, into docs/benchmarks.md.
# Run on demand: scripts/bench/fanout.sh [MIB_PER_IMAGE] [MIB_PER_SECOND]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
size_mib="${1:-64}"
rate_mib="${2:-8}"
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
trap 'jobs -p | xargs -r kill 2>/dev/null || true; rm -rf "$work"' EXIT
[ -x "$cache/s3s-fs/bin/s3s-fs" ] || cargo install s3s-fs@0.14.1 --features binary --locked --root "$cache/s3s-fs"

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

echo "== generating 4 images of ${size_mib} MiB"
mkdir -p "$work/srv" "$work/s3/bench"
for i in 1 2 3 4; do
  head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/srv/image-$i.raw"
done

# Each connection is sent at RATE MiB/s (a vendor's mirror, a runner's share of a link).
cat > "$work/throttle.py" <<'PY'
import http.server, os, sys, time
root, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) * 1024 * 1024
class Slow(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def copyfile(self, source, outputfile):
        chunk, start, sent = 64 * 1024, time.monotonic(), 0
        while True:
            data = source.read(chunk)
            if not data:
                return
            outputfile.write(data)
            sent += len(data)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Slow).serve_forever()
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port); s3_port=$(free_port)
python3 "$work/throttle.py" "$work/srv" "$http_port" "$rate_mib" &
"$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
sleep 2
export E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret E2_ENDPOINT="http://127.0.0.1:$s3_port"
export LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true

{
  printf 'apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n'
  for i in 1 2 3 4; do
    sum=$(sha256sum "$work/srv/image-$i.raw" | cut -d' ' -f1)
    printf '    - name: image-%s\n      source: {type: http, url: "http://127.0.0.1:%s/image-%s.raw", checksum: "sha256:%s"}\n      destination: bench/image-%s.raw\n' "$i" "$http_port" "$i" "$sum" "$i"
  done
} > "$work/images.yaml"
lab=(--manifest "$work/images.yaml" --store s3://bench)

now() { date +%s.%N; }
# Prints how long .labctl/lock.json existed while it runs (polled every 10 ms).
watch_lock() {
  local first="" last=""
  while [ ! -e "$work/stop" ]; do
    if [ -e "$work/s3/bench/.labctl/lock.json" ]; then
      t=$(now); first=${first:-$t}; last=$t
    fi
    sleep 0.01
  done
  if [ -n "$first" ]; then python3 -c "print(f'{$last - $first:.1f}')"; else echo 0; fi
}
empty_store() { rm -rf "$work/s3/bench" && mkdir -p "$work/s3/bench"; }

rows=()
for parallelism in 4 1; do
  echo "== one labctl apply --parallelism $parallelism"
  empty_store; rm -f "$work/stop"
  watch_lock > "$work/lock" & watcher=$!
  start=$(now)
  "$labctl" apply "${lab[@]}" --auto-approve --parallelism "$parallelism" >/dev/null 2>"$work/apply.log" || { tail "$work/apply.log"; exit 1; }
  end=$(now); touch "$work/stop"; wait "$watcher"
  rows+=("$(python3 -c "print(f'| one \`labctl apply --parallelism $parallelism\` | {$end - $start:.1f} s | $(cat "$work/lock") s |')")")
done

echo "== fan-out: 4 x labctl stage, then labctl apply --staged"
empty_store; rm -f "$work/stop"
watch_lock > "$work/lock" & watcher=$!
start=$(now)
"$labctl" plan "${lab[@]}" --out "$work/plan.json" --matrix "$work/matrix.json" >/dev/null 2>&1
pids=()
for i in 1 2 3 4; do
  "$labctl" stage "${lab[@]}" "$work/plan.json" --unit "image-$i" >/dev/null 2>"$work/stage-$i.log" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { cat "$work"/stage-*.log; exit 1; }; done
staged=$(now)
"$labctl" apply "${lab[@]}" "$work/plan.json" --staged >/dev/null 2>"$work/promote.log" || { tail "$work/promote.log"; exit 1; }
end=$(now); touch "$work/stop"; wait "$watcher"
rows+=("$(python3 -c "print(f'| fan-out: plan + 4 \`labctl stage\` at once + \`apply --staged\` | {$end - $start:.1f} s (staging {$staged - $start:.1f} s, promotion {$end - $staged:.1f} s) | $(cat "$work/lock") s |')")")
"$labctl" plan "${lab[@]}" --detailed-exitcode >/dev/null 2>&1 || { echo "error: the fan-out did not converge" >&2; exit 1; }

{
  echo "## Fan-out: staging beside one apply"
  echo
  echo "Four ${size_mib} MiB images from an HTTP server that sends each connection at ${rate_mib} MiB/s,"
  echo "into s3s-fs on this project's 2-core machine. The lock column is how long"
  echo "\`.labctl/lock.json\` existed (polled every 10 ms): a second merge waits that long. On one"
  echo "machine four legs share its CPU and disk, so the fan-out's wall time here is at best the"
  echo "parallel apply's; on a CI matrix each leg has a runner of its own (its disk, CPU, KVM and"
  echo "6-hour limit), which is what the fan-out buys, with the lock held only for the promotion's"
  echo "server-side copies."
  echo
  echo "Produced by \`scripts/bench/fanout.sh ${size_mib} ${rate_mib}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| run | wall time | lock held |"
  echo "|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh fanout "$root/docs/benchmarks.md"
sed -n '/<!-- bench:fanout -->/,/<!-- \/bench:fanout -->/p' "$root/docs/benchmarks.md"
