#!/usr/bin/env bash
# volume.sh - ReadVolume -> WriteVolume (a host-assisted clone) between two
# `cdi-mover serve` processes over loopback, on the reference image.
#
# For each case: wall time, throughput (virtual bytes / s and data bytes / s), bytes on the
# wire (data extents, whole chunk messages, and loopback traffic per hop), CPU time of the
# two movers and of the client, and the output's allocated bytes. Medians of RUNS runs. The
# target is verified against the source with `qemu-img compare` after each case.
#
# Cases:
#   file    RAW of disk.raw (a sparse file)          -> a file on the other mover
#   block   RAW of a loop device holding the image   -> a loop device (fresh, sparse backing)
#   volume  RAW of a volume's disk.img               -> a volume directory (disk.img)
#   tree    TAR of a directory holding the image as a sparse file (not named disk.img)
#           and a few small files                    -> a directory (extracted)
#
# Two ways (VIA):
#   peer   (default) what a host-assisted clone does: a Populate task on mover B whose
#          source is mover A's volume (B calls A's ReadVolume itself: one hop).
#   relay  a client relays A's ReadVolume into B's WriteVolume (`client copy-volume`: two
#          hops), what other tools built on the two calls do.
# Each case also times the copy floor in the same run: `cp --sparse=always` of the raw image
# onto the same disk, then `sync`; `x_floor` is the clone's wall time over it. `cold_s` and
# `x_cold` are the same with the page cache dropped before each cp. For `block`, `rw_s` and
# `x_rw`: what the disk takes to read the source device (`dd iflag=direct`) while the cp
# writes, both at once as in a clone; the other cases have `-` there.
#
# Usage: mover/benches/volume.sh [IMAGES_DIR]
#   IMAGES_DIR defaults to $BENCH_IMAGES or ./bench-images (needs disk.raw and disk.qcow2).
#   RUNS=3 CASES="file block volume tree" VIA=peer|relay BENCH_OUT=<scratch dir on the same disk>.
#   LOOP_DIRECT_IO=on|off: the loop devices' own direct I/O (on: no second page cache,
#   closer to a real block device). Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGES=${1:-${BENCH_IMAGES:-$repo/bench-images}}
RUNS=${RUNS:-3}
CASES=${CASES:-"file block volume tree"}
BENCH_OUT=${BENCH_OUT:-$IMAGES/out-volume}

command -v qemu-img >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-utils >/dev/null; }
cargo build --release -p cdi-mover --manifest-path "$repo/Cargo.toml" >&2
MOVER="$repo/target/release/cdi-mover"
mkdir -p "$BENCH_OUT"

pids=() loops=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT

# Starts a mover; sets $addr and $pid.
serve() {
  local log=$BENCH_OUT/serve-$1.log out=$BENCH_OUT/serve-$1.out
  : >"$out"
  "$MOVER" serve --insecure-plaintext --listen 127.0.0.1:0 >"$out" 2>"$log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do [ -s "$out" ] && break; sleep 0.1; done
  [ -s "$out" ] || { echo "serve $1 did not start: $(cat "$log")" >&2; exit 1; }
  addr=$(sed -E 's/.*"listening":"([^"]+)".*/\1/' "$out")
}
serve a; A=$addr; PA=$pid
serve b; B=$addr; PB=$pid

cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }        # utime + stime, in ticks
lo_bytes() { awk '/^ *lo:/ { print $2 }' /proc/net/dev; }       # bytes received on loopback
tick=$(getconf CLK_TCK)

# A loop device over a fresh sparse file of $2 bytes; sets $dev.
mkloop() {
  rm -f "$1"
  truncate -s "$2" "$1"
  dev=$(losetup -f --show --direct-io="${LOOP_DIRECT_IO:-on}" "$1")
  loops+=("$dev")
}

VIA=${VIA:-peer}
now() { date +%s.%N; }

# One copy: prints "wall data_bytes message_bytes lo_per_hop cpu_movers cpu_client".
# (peer: the task's report has no byte counts: "-" for data and message bytes, the loopback
# traffic is the one hop's.)
run_copy() { # source target [content type, for VIA=peer]
  local src=$1 dst=$2 content=${3:-kubevirt}
  sync
  local ca cb lo0 tf report t0 t1
  ca=$(cpu_of "$PA"); cb=$(cpu_of "$PB"); lo0=$(lo_bytes)
  tf=$(mktemp)
  t0=$(now)
  if [ "$VIA" = relay ]; then
    report=$(/usr/bin/time -o "$tf" -f "%U %S" "$MOVER" client --insecure-plaintext --address "$A" \
      copy-volume "$src" "$dst" --to "$B")
  else
    # The task ends flushed (fsync) like an import; the relay's WriteVolume commits the same way.
    report=$(/usr/bin/time -o "$tf" -f "%U %S" "$MOVER" client --insecure-plaintext --address "$B" \
      populate --content-type "$content" "volume://$A/$src" "$dst")
  fi
  t1=$(now)
  local lo1 ca1 cb1 cu cs
  lo1=$(lo_bytes); ca1=$(cpu_of "$PA"); cb1=$(cpu_of "$PB")
  read -r cu cs < <(tail -n1 "$tf"); rm -f "$tf"
  local secs data=- msg=- hops=2
  secs=$(echo "$t1 - $t0" | bc -l)
  if [ "$VIA" = relay ]; then
    data=$(sed -E 's/.*"data_bytes":([0-9]+).*/\1/' <<<"$report")
    msg=$(sed -E 's/.*"message_bytes":([0-9]+).*/\1/' <<<"$report")
  else
    hops=1
  fi
  echo "$secs $data $msg $(( (lo1 - lo0) / hops )) $(echo "($ca1 - $ca + $cb1 - $cb) / $tick" | bc -l) $(echo "$cu + $cs" | bc)"
}

# The copy floor: `cp --sparse=always` of the raw image onto the same disk, then `sync`.
# `floor cold` drops the page cache first, so that cp reads the image from the disk, as the
# clone of a block volume (read with O_DIRECT) always does; plain `floor` reads it from the
# cache the previous runs left. `floor rw DEVICE`, the read-and-write floor of a block
# clone: DEVICE read with O_DIRECT while the cached image is copied, timed until both end.
floor() {
  local out=$BENCH_OUT/floor.raw t0 t1 reader=
  rm -f "$out"
  case ${1:-} in
    cold) sync; echo 3 >/proc/sys/vm/drop_caches ;;
    rw) cat "$IMAGES/disk.raw" >/dev/null; sync ;;
    *) sync ;;
  esac
  t0=$(now)
  if [ "${1:-}" = rw ]; then
    dd if="$2" of=/dev/null bs=4M iflag=direct status=none &
    reader=$!
  fi
  cp --sparse=always "$IMAGES/disk.raw" "$out"; sync
  if [ -n "$reader" ]; then wait "$reader"; fi
  t1=$(now)
  rm -f "$out"
  echo "$t1 - $t0" | bc -l
}

median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
alloc() { if [ -f "$1" ]; then echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); else echo -; fi; }

echo "via: $VIA"
printf '%-7s %8s %8s %8s %8s %8s %8s %8s %10s %13s %13s %13s %9s %9s %14s\n' \
  case wall_s floor_s x_floor cold_s x_cold rw_s x_rw virt_MB/s data_bytes message_bytes lo_per_hop cpu_mov_s \
  cpu_cli_s alloc_bytes

report_row() { # case virtual_size "median row" output [source device, for the rw floor]
  local wall data msg lo cm cc fl fc rw=- xrw=-
  read -r wall data msg lo cm cc <<<"$3"
  fl=$(for _ in $(seq "$RUNS"); do floor; done | median)
  fc=$(for _ in $(seq "$RUNS"); do floor cold; done | median)
  if [ -n "${5:-}" ]; then
    rw=$(for _ in $(seq "$RUNS"); do floor rw "$5"; done | median)
    xrw=$(printf '%.2f' "$(echo "$wall / $rw" | bc -l)")
    rw=$(printf '%.2f' "$rw")
  fi
  printf '%-7s %8.2f %8.2f %8.2f %8.2f %8.2f %8s %8s %10.0f %13s %13s %13s %9.2f %9.2f %14s\n' "$1" "$wall" "$fl" \
    "$(echo "$wall / $fl" | bc -l)" "$fc" "$(echo "$wall / $fc" | bc -l)" "$rw" "$xrw" \
    "$(echo "$2 / $wall / 1000000" | bc -l)" "$data" "$msg" "$lo" "$cm" "$cc" "$(alloc "$4")"
  echo "        each run: $(awk '{ printf "%.2f ", $1 }' "$rows")s"
}

rows=$BENCH_OUT/rows
for c in $CASES; do
  : >"$rows"
  case $c in
    file)
      src=$IMAGES/disk.raw; out=$BENCH_OUT/clone.raw
      size=$(stat -c %s "$src")
      for _ in $(seq "$RUNS"); do rm -f "$out"; run_copy "$src" "$out" >>"$rows"; done
      qemu-img compare -q -f raw -F raw "$src" "$out" || { echo "file: the clone differs" >&2; exit 1; }
      report_row file "$size" "$(median <"$rows")" "$out"
      ;;
    block)
      size=$(qemu-img info --output=json "$IMAGES/disk.qcow2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
      mkloop "$BENCH_OUT/src-loop.img" "$size"; srcdev=$dev
      "$MOVER" import "$IMAGES/disk.qcow2" "$srcdev" --progress none >/dev/null
      for _ in $(seq "$RUNS"); do
        # A fresh destination each time: zero extents are punched into its sparse backing.
        mkloop "$BENCH_OUT/dst-loop.img" "$size"; dstdev=$dev
        run_copy "$srcdev" "$dstdev" >>"$rows"
        qemu-img compare -q -f qcow2 -F raw "$IMAGES/disk.qcow2" "$dstdev" || { echo "block: the clone differs" >&2; exit 1; }
        losetup -d "$dstdev"
      done
      report_row block "$size" "$(median <"$rows")" "$BENCH_OUT/dst-loop.img" "$srcdev"
      ;;
    volume)
      src=$BENCH_OUT/src-volume dst=$BENCH_OUT/dst-volume
      rm -rf "$src"; mkdir -p "$src"
      # A 4.5 GiB claim, as CDI inflates a 4 GiB request by the filesystem overhead.
      "$MOVER" import "$IMAGES/disk.qcow2" "$src" --size $((4608 << 20)) --progress none >/dev/null
      size=$(stat -c %s "$src/disk.img")
      for _ in $(seq "$RUNS"); do rm -rf "$dst"; mkdir -p "$dst"; run_copy "$src" "$dst" >>"$rows"; done
      qemu-img compare -q -f raw -F raw "$src/disk.img" "$dst/disk.img" || { echo "volume: the clone differs" >&2; exit 1; }
      report_row volume "$size" "$(median <"$rows")" "$dst/disk.img"
      ;;
    tree)
      src=$BENCH_OUT/src-tree dst=$BENCH_OUT/dst-tree
      rm -rf "$src"; mkdir -p "$src/etc" "$src/images"
      cp --sparse=always "$IMAGES/disk.raw" "$src/images/vm.raw"
      for i in $(seq 100); do echo "setting $i" >"$src/etc/conf-$i"; done
      ln -s images/vm.raw "$src/current"
      size=$(stat -c %s "$src/images/vm.raw")
      for _ in $(seq "$RUNS"); do rm -rf "$dst"; mkdir -p "$dst"; run_copy "$src" "$dst" archive >>"$rows"; done
      cmp "$src/images/vm.raw" "$dst/images/vm.raw" || { echo "tree: the clone differs" >&2; exit 1; }
      diff -r --no-dereference "$src" "$dst" >/dev/null || { echo "tree: the trees differ" >&2; exit 1; }
      report_row tree "$size" "$(median <"$rows")" "$dst/images/vm.raw"
      ;;
  esac
done
echo "peak RSS of the movers (KiB): $(grep VmHWM "/proc/$PA/status" | awk '{print $2}') (reader) $(grep VmHWM "/proc/$PB/status" | awk '{print $2}') (writer)"
