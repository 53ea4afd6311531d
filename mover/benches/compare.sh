#!/usr/bin/env bash
# compare.sh - cdi-mover import next to the reference tools, on the reference workload.
#
# Prints, for each case, wall time, CPU time, peak RSS and allocated output bytes of
# `cdi-mover import` and of the reference tool(s), with ratios (cdi / best reference).
# Medians of RUNS runs. Every command is timed with a `sync` after it: qemu-img and the
# decompressors leave dirty pages behind, cdi-mover fsyncs before it reports success.
#
# Usage: mover/benches/compare.sh [IMAGES_DIR]
#   IMAGES_DIR defaults to $BENCH_IMAGES or ./bench-images; it is made with
#   make_images.sh (beside this script) when missing (5-20 min). Needs root for the loop device.
#   RUNS=3 CASES="qcow2 qcow2-c loop gz xz zst vmdk vmdk-stream vhd vhd-fixed vhdx vdi"
#   BENCH_OUT=<scratch dir on the same disk>
#   The vmdk/vhd/vhdx/vdi images are made once from disk.qcow2 with qemu-img and kept in
#   IMAGES_DIR beside the others.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGES=${1:-${BENCH_IMAGES:-$repo/bench-images}}
RUNS=${RUNS:-3}
CASES=${CASES:-"qcow2 qcow2-c loop gz xz zst vmdk vmdk-stream vhd vhd-fixed vhdx vdi"}
BENCH_OUT=${BENCH_OUT:-$IMAGES/out}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need pigz || ! need zstd || ! need xz || ! need qemu-img; then
  apt-get update -qq && apt-get install -y -qq pigz zstd xz-utils qemu-utils >/dev/null
fi
if [ ! -f "$IMAGES/disk.raw.xz" ]; then
  (unset BENCH_OUT; OUT_DIR="$IMAGES" "$here/make_images.sh")
fi
cargo build --release -p cdi-mover --manifest-path "$repo/Cargo.toml" >&2
MOVER="$repo/target/release/cdi-mover"
mkdir -p "$BENCH_OUT"
out="$BENCH_OUT/out.raw"

# One timed run: prints "wall cpu rss_kib alloc_bytes". $1 = output path to measure, rest = command.
measure() {
  local output=$1; shift
  if [ -f "$output" ]; then rm -f "$output"; fi   # never a device node
  sync
  # Keep the source in the page cache for every tool alike.
  local tf wall user sys rss
  tf=$(mktemp)
  /usr/bin/time -o "$tf" -f "%e %U %S %M" sh -c "$* && sync" >/dev/null 2>&1 || { echo "failed: $*" >&2; cat "$tf" >&2; }
  read -r wall user sys rss < <(tail -n1 "$tf")
  rm -f "$tf"
  local alloc=-
  if [ -f "$output" ]; then alloc=$(( $(stat -c %b "$output") * $(stat -c %B "$output") )); fi
  echo "$wall $(echo "$user + $sys" | bc) $rss $alloc"
}

# Median of RUNS measurements of the same command (by wall time).
median() {
  local output=$1; shift
  local prep=${PREP:-true}
  local rows=()
  for _ in $(seq "$RUNS"); do
    eval "$prep"
    rows+=("$(measure "$output" "$@")")
  done
  printf '%s\n' "${rows[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

# Medians of RUNS runs of two commands taken in turns (A B, B A, A B, ...), so that both
# meet the machine in the same state (a shared VM's speed drifts); sets PAIR_A and PAIR_B.
pair() { # output "command A" "command B"
  local output=$1 a=$2 b=$3 prep=${PREP:-true} i
  local ra=() rb=()
  for i in $(seq "$RUNS"); do
    if (( i % 2 )); then
      eval "$prep"; ra+=("$(measure "$output" "$a")"); eval "$prep"; rb+=("$(measure "$output" "$b")")
    else
      eval "$prep"; rb+=("$(measure "$output" "$b")"); eval "$prep"; ra+=("$(measure "$output" "$a")")
    fi
  done
  PAIR_A=$(printf '%s\n' "${ra[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  PAIR_B=$(printf '%s\n' "${rb[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
}

warm() { cat "$@" >/dev/null; }

printf '%-10s %-44s %8s %8s %9s %14s\n' case tool wall_s cpu_s rss_MiB alloc_bytes
row() { # case tool "wall cpu rss alloc"
  local wall cpu rss alloc
  read -r wall cpu rss alloc <<<"$3"
  printf '%-10s %-44s %8.2f %8.2f %9.1f %14s\n' "$1" "$2" "$wall" "$cpu" "$(echo "$rss / 1024" | bc -l)" "$alloc"
}
ratio() { # case "cdi row" "best ref row"
  local cw cc cr ca rw rc rr ra
  read -r cw cc cr ca <<<"$2"
  read -r rw rc rr ra <<<"$3"
  local ar="-"
  if [ "$ca" != "-" ] && [ "$ra" != "-" ] && [ "$ra" -gt 0 ]; then ar=$(echo "scale=3; $ca / $ra" | bc); fi
  printf '%-10s %-44s %8.3f %8.3f %9.3f %14s\n\n' "$1" "ratio cdi/best" "$(echo "$cw / $rw" | bc -l)" "$(echo "$cc / $rc" | bc -l)" "$(echo "$cr / $rr" | bc -l)" "$ar"
}
best() { printf '%s\n' "$@" | sort -n | head -n1; }

for c in $CASES; do
  case $c in
    qcow2|qcow2-c)
      src=$IMAGES/disk.qcow2; [ "$c" = qcow2-c ] && src=$IMAGES/disk-c.qcow2
      warm "$src"
      pair "$out" "$MOVER import $src $out --progress none" "qemu-img convert -O raw $src $out"
      cdi=$PAIR_A ref=$PAIR_B
      row "$c" "cdi-mover import" "$cdi"
      row "$c" "qemu-img convert -O raw" "$ref"
      ratio "$c" "$cdi" "$ref"
      ;;
    loop)
      src=$IMAGES/disk.qcow2
      backing=$BENCH_OUT/loop.img
      rm -f "$backing"; truncate -s 4G "$backing"
      dev=$(losetup -f --show "$backing")
      trap 'losetup -d "$dev" 2>/dev/null || true' EXIT
      # The device holds old data before every run, so zero ranges must really be zeroed.
      export PREP="{ tr '\\0' '\\377' </dev/zero || true; } | dd of=$dev bs=4M count=1024 iflag=fullblock oflag=direct status=none; sync; warm $src"
      pair "$dev" "$MOVER import $src $dev --progress none" "qemu-img convert -n -t none -W -O raw $src $dev"
      cdi=$PAIR_A ref=$PAIR_B
      "$MOVER" import "$src" "$dev" --progress none && qemu-img compare -f qcow2 -F raw "$src" "$dev" >&2
      unset PREP
      row "$c" "cdi-mover import → loop (held data)" "$cdi"
      row "$c" "qemu-img convert -n -t none -W → loop" "$ref"
      ratio "$c" "$cdi" "$ref"
      trap - EXIT; losetup -d "$dev"; rm -f "$backing"
      ;;
    gz|xz|zst)
      src=$IMAGES/disk.raw.$c
      warm "$src"
      cdi=$(median "$out" "$MOVER" import "$src" "$out" --progress none)
      row "$c" "cdi-mover import" "$cdi"
      refs=()
      case $c in
        gz)  tools=("gzip -dc" "pigz -dc") ;;
        xz)  tools=("xz -dc" "xz -T0 -dc") ;;
        zst) tools=("zstd -dc" "zstd -T0 -dc") ;;
      esac
      for t in "${tools[@]}"; do
        r=$(median "$out" "$t $src > $out")
        row "$c" "$t > file" "$r"
        refs+=("$r")
      done
      ratio "$c" "$cdi" "$(best "${refs[@]}")"
      ;;
    vmdk|vmdk-stream|vhd|vhd-fixed|vhdx|vdi)
      case $c in
        vmdk)        fmt=vmdk opts=subformat=monolithicSparse ;;
        vmdk-stream) fmt=vmdk opts=subformat=streamOptimized ;;
        vhd)         fmt=vpc  opts=subformat=dynamic ;;
        vhd-fixed)   fmt=vpc  opts=subformat=fixed ;;
        vhdx)        fmt=vhdx opts=subformat=dynamic ;;
        vdi)         fmt=vdi  opts=static=off ;;
      esac
      src=$IMAGES/disk.$c
      if [ ! -f "$src" ]; then
        qemu-img convert -f qcow2 -O "$fmt" -o "$opts" "$IMAGES/disk.qcow2" "$src.tmp" && mv "$src.tmp" "$src"
      fi
      warm "$src"
      "$MOVER" import "$src" "$out" --progress none && qemu-img compare -f "$fmt" -F raw "$src" "$out" >&2
      pair "$out" "$MOVER import $src $out --progress none" "qemu-img convert -f $fmt -O raw $src $out"
      cdi=$PAIR_A ref=$PAIR_B
      row "$c" "cdi-mover import" "$cdi"
      row "$c" "qemu-img convert -O raw" "$ref"
      ratio "$c" "$cdi" "$ref"
      ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
rm -f "$out"
