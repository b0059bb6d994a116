#!/usr/bin/env bash
# Times `labctl plan` of N unchanged images (100, 1,000, 10,000 by default) and counts the S3
# requests it makes, against Ceph RGW (a one-node cluster, which lists ETags) and s3s-fs (which
# lists none, so a plan goes by the listed size and time the snapshot paired with each ETag).
# Writes its section of docs/benchmarks.md. Run on demand: scripts/bench/plan.sh [N…]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 1000 10000)
cache="${LABCTL_TEST_CACHE:-$HOME/.cache/labctl-ci}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

for tool in radosgw ceph-mon ceph-osd radosgw-admin monmaptool; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (scripts/test installs Ceph)" >&2; exit 1; }
done
[ -x "$cache/s3s-fs/bin/s3s-fs" ] || { echo "error: run scripts/test first (s3s-fs)" >&2; exit 1; }
python="$cache/moto-venv/bin/python"
[ -x "$python" ] || { echo "error: run scripts/test first (the venv with boto3)" >&2; exit 1; }

echo "== building labctl (release)"
cargo build --release --locked -q
labctl="$root/target/release/labctl"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A forwarding proxy that counts requests by method (and GETs under metadata/).
cat > "$work/proxy.py" <<'PY'
import http.client, http.server, sys, threading
upstream, counts, lock = sys.argv[2], {}, threading.Lock()
class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.path == "/__counts":
            with lock:
                data = repr(counts).encode(); counts.clear()
            self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data); return
        with lock:
            kind = self.command + (" record" if "/metadata/" in self.path else "")
            counts[kind] = counts.get(kind, 0) + 1
        conn = http.client.HTTPConnection(upstream)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body, headers)
        r = conn.getresponse(); data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # A HEAD's Content-Length is the object's size, not this (empty) body's.
        length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0"); self.end_headers()
        if self.command != "HEAD": self.wfile.write(data)
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
PY

start_ceph() { # dir port -> endpoint on stdout
  local dir=$1 rgw_port=$2 mon_port fsid
  mon_port=$(free_port); fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  mkdir -p "$dir"/{mon,osd,run,log}
  sed -e "s|@FSID@|$fsid|" -e "s|@MON_PORT@|$mon_port|" -e "s|@RGW_PORT@|$rgw_port|" \
    -e "s|@DIR@|$dir|g" "$root/tests/support/ceph.conf.in" > "$dir/ceph.conf"
  local c=(-c "$dir/ceph.conf")
  monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
  ceph-mon "${c[@]}" --mkfs -i a --monmap "$dir/monmap"
  ceph-mon "${c[@]}" -i a
  ceph "${c[@]}" osd create >/dev/null
  ceph-osd "${c[@]}" -i 0 --mkfs >/dev/null 2>&1
  ceph-osd "${c[@]}" -i 0 >/dev/null 2>&1
  radosgw-admin "${c[@]}" user create --uid=bench --display-name=bench --access-key=bench --secret=benchsecret >/dev/null 2>&1
  radosgw "${c[@]}" -n client.rgw
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$rgw_port/" && return 0; sleep 0.1; done
  echo "error: radosgw did not start" >&2; exit 1
}

create_bucket() { # endpoint
  "$python" - "$1" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="bench",
             aws_secret_access_key="benchsecret", region_name="us-east-1").create_bucket(Bucket="bench")
PY
}

export E2_ACCESS_KEY=bench E2_SECRET_KEY=benchsecret LABCTL_ALLOW_INSECURE_LOOPBACK=1 CI=true

rows=()
for store in ceph s3s-fs; do
  for n in "${sizes[@]}"; do
    run="$work/$store-$n"; mkdir -p "$run/srv"
    s3_port=$(free_port)
    if [ "$store" = ceph ]; then
      start_ceph "$run/ceph" "$s3_port"
    else
      mkdir -p "$run/s3/bench"
      "$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key bench --secret-key benchsecret "$run/s3" >/dev/null 2>&1 &
      sleep 1
    fi
    [ "$store" = ceph ] && create_bucket "http://127.0.0.1:$s3_port"
    http_port=$(free_port); proxy_port=$(free_port)
    python3 - "$run/srv" "$n" > "$run/images.yaml" <<'PY'
import hashlib, os, sys
srv, n = sys.argv[1], int(sys.argv[2])
print("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:")
for i in range(n):
    body = f"image {i}\n".encode()
    open(os.path.join(srv, f"{i}.img"), "wb").write(body)
    print(f"    - {{name: img{i}, source: {{type: http, url: 'http://127.0.0.1:PORT/{i}.img', checksum: 'sha256:{hashlib.sha256(body).hexdigest()}'}}, destination: b/{i}.img}}")
PY
    sed -i "s/PORT/$http_port/" "$run/images.yaml"
    (cd "$run/srv" && exec python3 -m http.server "$http_port" --bind 127.0.0.1 >/dev/null 2>&1) &
    python3 "$work/proxy.py" "$proxy_port" "127.0.0.1:$s3_port" &
    sleep 1
    echo "== $store, $n images: publishing"
    E2_ENDPOINT="http://127.0.0.1:$s3_port" "$labctl" apply --auto-approve --parallelism 16 \
      --manifest "$run/images.yaml" --store s3://bench > "$run/apply.log" 2>&1 \
      || { tail -20 "$run/apply.log" >&2; exit 1; }
    echo "== $store, $n images: planning"
    export E2_ENDPOINT="http://127.0.0.1:$proxy_port"
    "$labctl" plan --manifest "$run/images.yaml" --store s3://bench >/dev/null 2>&1 # warm
    curl -s "http://127.0.0.1:$proxy_port/__counts" >/dev/null
    best=""
    for _ in 1 2 3; do
      start=$(date +%s.%N)
      "$labctl" plan --detailed-exitcode --manifest "$run/images.yaml" --store s3://bench > "$run/plan.log" 2>&1 \
        || { tail -20 "$run/plan.log" >&2; exit 1; }
      t=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
      if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
    done
    counts=$(curl -s "http://127.0.0.1:$proxy_port/__counts")
    per_run=$(python3 -c "c = $counts; print(', '.join(f'{k} {v // 3}' for k, v in sorted(c.items())))")
    total=$(python3 -c "c = $counts; print(sum(c.values()) // 3)")
    # The floor any client pays at 1,000 keys a page: boto3 listing the same two prefixes,
    # concurrently, through the same proxy, and nothing else.
    floor=$("$python" - "$E2_ENDPOINT" <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
c = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="bench",
                 aws_secret_access_key="benchsecret", region_name="us-east-1")
def keys(prefix):
    return sum(len(p.get("Contents", [])) for p in
               c.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix))
best = None
for _ in range(3):
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(keys, ["metadata/", "images/"]))
    t = time.monotonic() - start
    best = t if best is None or t < best else best
print(f"{best:.2f}")
PY
)
    rows+=("| $store | $n | $best s | $floor s | $total ($per_run) |")
    unset E2_ENDPOINT
    pkill -f "$run" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    sleep 1
  done
done

{
  echo "## Planning"
  echo
  echo "\`labctl plan\` of N unchanged images (each apply left its record snapshot), best of three,"
  echo "with the S3 requests of one plan counted by a forwarding proxy. Ceph RGW (a one-node"
  echo "memstore cluster on 127.0.0.1) lists ETags, so a refresh is a few list pages, one GET of"
  echo "\`.labctl/records.json.zst\` and the index files. s3s-fs lists no ETags; there a plan takes"
  echo "a record or object as unchanged while its listed size and modification time are the ones"
  echo "the snapshot paired with its ETag (drift still fetches and HEADs everything). \"Listing"
  echo "alone\" is boto3 listing \`metadata/\` and \`images/\` concurrently and doing nothing"
  echo "else: the floor for any client at the 1,000 keys a page S3 allows. s3s-fs stats every"
  echo "matching file for every page, so its listing grows with the square of the images and"
  echo "sets the s3s-fs figures. Times include the Python proxy (about a millisecond a request)."
  echo "2-core machine, labctl in release mode."
  echo
  echo "Produced by \`scripts/bench/plan.sh ${sizes[*]}\` on $(date -u +%Y-%m-%d), labctl $("$labctl" --version | cut -d' ' -f2)."
  echo
  echo "| store | images | plan | listing alone (boto3) | S3 requests per plan |"
  echo "|---|---:|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} | scripts/bench/section.sh plan "$root/docs/benchmarks.md"
sed -n '/bench:plan/,/\/bench:plan/p' "$root/docs/benchmarks.md"
