#!/usr/bin/env bash
# demo.sh - the main job without a cluster: build cdi-mover, generate a sample VM disk,
# serve its qcow2 over a local HTTP server (no Range support, so it is converted while it
# streams, with no scratch copy), import it into a raw file with a progress bar, and check
# the result with qemu-img.
#
# Usage: ./demo.sh [WORK_DIR]     (default: a fresh directory under /tmp)
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d /tmp/cdi-demo.XXXXXX)}
mkdir -p "$work/www"

command -v qemu-img >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-utils >/dev/null; }

echo "== building cdi-mover (release)"
cargo build --release -q -p cdi-mover --manifest-path "$repo/Cargo.toml"
mover=$repo/target/release/cdi-mover

echo "== generating a sample disk: 2 GiB virtual, ~200 MiB of data, holes in between"
raw=$work/sample.raw
rm -f "$raw"; truncate -s 2G "$raw"
for i in 0 3 7 12 19; do
  dd if=/dev/urandom of="$raw" bs=1M count=24 seek=$((i * 96)) conv=notrunc status=none
  { yes "cdi-rs fills PersistentVolumeClaims with VM disks" || true; } | head -c 16M |
    dd of="$raw" bs=1M iflag=fullblock seek=$((i * 96 + 40)) conv=notrunc status=none
done
qemu-img convert -f raw -O qcow2 "$raw" "$work/www/sample.qcow2"
ls -lh "$work/www/sample.qcow2" | awk '{print "   sample.qcow2: " $5}'

echo "== serving it on 127.0.0.1 (python http.server: no ranges, so cdi-mover streams)"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/www" >"$work/http.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
port=
for _ in $(seq 100); do
  port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/http.log" | head -n1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "the HTTP server did not start" >&2; exit 1; }
url=http://127.0.0.1:$port/sample.qcow2

echo "== cdi-mover import $url $work/disk.raw"
"$mover" import "$url" "$work/disk.raw" --progress bar

echo "== checking against the original with qemu-img compare"
qemu-img compare -f raw -F raw "$raw" "$work/disk.raw"
du -h --apparent-size "$work/disk.raw" | awk '{print "   disk.raw size:      " $1}'
du -h "$work/disk.raw" | awk '{print "   disk.raw allocated: " $1 " (zero ranges are holes)"}'
echo "done: $work"
