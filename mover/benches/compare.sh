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
#   RUNS=3 CASES="qcow2 qcow2-c loop gz xz zst vmdk vmdk-stream vhd vhd-fixed vhdx vdi s3"
#   CASES=registry is not in the default list (about 2.5 min for RUNS=3: CDI's way extracts
#   and converts 1.3 GB each run); ask for it by name. Network sources: see below.
#   BENCH_OUT=<scratch dir on the same disk>
#   CARGO_TARGET_DIR is honoured (cdi-mover is built there, release).
#   The vmdk/vhd/vhdx/vdi images are made once from disk.qcow2 with qemu-img and kept in
#   IMAGES_DIR beside the others.
#
# Network sources (servers on 127.0.0.1 only, killed on exit):
#   registry  disk.qcow2 as a containerDisk (one gzip -6 layer holding disk/disk.qcow2, OCI
#             layout written here and kept in IMAGES_DIR/containerdisk-oci, pushed with skopeo)
#             in Debian's docker-registry over plain HTTP: cdi-mover import docker://… next to
#             (a) `skopeo copy docker://… dir:` and (b) CDI's way: that copy, the disk
#             extracted from the layer, `qemu-img convert -O raw`.
#   s3        disk.qcow2 as an S3 object, path style: cdi-mover import --s3
#             http://127.0.0.1:PORT/bench/disk.qcow2 (SigV4-signed) next to (a) `curl -o` of the
#             object (signed too) and (b) that download, then qemu-img convert. S3_SERVER picks
#             the server: nginx (default) serves the object's GET/HEAD/Range as S3 does and
#             ignores the signature; moto (PyPI moto[server], installed if missing; object put
#             with boto3) is a real S3 API but reads the whole object for every ranged GET
#             (2.9-4.0 s for 2 MiB of this 1.3 GB object), so cdi-mover's ranged, parallel
#             reads take many minutes there: it measures moto, not the transfer.
#   scratch_bytes is what a tool writes besides the output (0 for cdi-mover); for a bare
#   transfer (a) the download is its output.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGES=${1:-${BENCH_IMAGES:-$repo/bench-images}}
RUNS=${RUNS:-3}
CASES=${CASES:-"qcow2 qcow2-c loop gz xz zst vmdk vmdk-stream vhd vhd-fixed vhdx vdi s3"}
BENCH_OUT=${BENCH_OUT:-$IMAGES/out}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need pigz || ! need zstd || ! need xz || ! need qemu-img; then
  apt-get update -qq && apt-get install -y -qq pigz zstd xz-utils qemu-utils >/dev/null
fi
# Another job may be making the images there right now (make_images.sh starts by deleting them).
while [ -e "$IMAGES/.making" ]; do echo "waiting for $IMAGES/.making to go" >&2; sleep 30; done
if [ ! -f "$IMAGES/disk.raw.xz" ]; then
  (unset BENCH_OUT; OUT_DIR="$IMAGES" "$here/make_images.sh")
fi
cargo build --release -p cdi-mover --manifest-path "$repo/Cargo.toml" >&2
MOVER="${CARGO_TARGET_DIR:-$repo/target}/release/cdi-mover"
mkdir -p "$BENCH_OUT"
out="$BENCH_OUT/out.raw"

# Allocated bytes of a file or of everything under a directory ("-" when absent).
allocated() {
  if [ -f "$1" ]; then echo $(( $(stat -L -c %b "$1") * $(stat -L -c %B "$1") ))
  elif [ -d "$1" ]; then du -s --block-size=1 "$1" | cut -f1
  else echo -; fi
}

# One timed run: prints "wall cpu rss_kib alloc_bytes scratch_bytes". $1 = output path to
# measure (a file, or a directory for a download), rest = command. With SCRATCH set, the
# command's scratch directory: emptied before, its allocated bytes reported, removed after.
measure() {
  local output=$1; shift
  if [ -f "$output" ]; then rm -f "$output"; fi   # never a device node
  if [ -d "$output" ]; then rm -rf "$output"; fi
  if [ -n "${SCRATCH:-}" ]; then rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"; fi
  sync
  # Keep the source in the page cache for every tool alike.
  local tf wall user sys rss
  tf=$(mktemp)
  /usr/bin/time -o "$tf" -f "%e %U %S %M" sh -c "$* && sync" >/dev/null 2>&1 || { echo "failed: $*" >&2; cat "$tf" >&2; }
  read -r wall user sys rss < <(tail -n1 "$tf")
  rm -f "$tf"
  local alloc scratch=0
  alloc=$(allocated "$output")
  if [ -n "${SCRATCH:-}" ]; then scratch=$(allocated "$SCRATCH"); rm -rf "$SCRATCH"; fi
  echo "$wall $(echo "$user + $sys" | bc) $rss $alloc $scratch"
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
  turns "$1" "$2" "$3"
  PAIR_A=${TURNS[0]} PAIR_B=${TURNS[1]}
}

# The same for any number of commands, each with its own output and scratch directory
# ("output|scratch|command", scratch may be empty): run i starts with command i (mod n), so
# each command takes each place in turn. Sets TURNS[k] to command k's median row.
turns() { # output "command"... or "output|scratch|command"...
  local default_out=$1; shift
  local n=$# prep=${PREP:-true} i j k spec output scratch cmd
  local specs=("$@") rows=()
  for i in $(seq 0 $(( RUNS - 1 ))); do
    for j in $(seq 0 $(( n - 1 ))); do
      k=$(( (i + j) % n )); spec=${specs[$k]}
      if [[ $spec == *"|"*"|"* ]]; then
        output=${spec%%|*}; spec=${spec#*|}; scratch=${spec%%|*}; cmd=${spec#*|}
      else
        output=$default_out scratch= cmd=$spec
      fi
      eval "$prep"
      rows[k]+="$(SCRATCH=$scratch measure "$output" "$cmd")"$'\n'
    done
  done
  TURNS=()
  for k in $(seq 0 $(( n - 1 ))); do
    TURNS[k]=$(printf '%s' "${rows[$k]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  done
}

warm() { cat "$@" >/dev/null; }

# Servers and devices this script started, released on any exit.
REGISTRY_PID= MOTO_PID= NGINX_PID= LOOP_DEV=
on_exit() {
  if [ -n "$REGISTRY_PID" ]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
  if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  if [ -n "$LOOP_DEV" ]; then losetup -d "$LOOP_DEV" 2>/dev/null || true; fi
}
trap on_exit EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until URL answers (any HTTP status), failing if the server PID exits or 60 s pass.
wait_http() { # url pid name log
  local deadline=$(( SECONDS + 60 ))
  until curl -s -o /dev/null "$1"; do
    if ! kill -0 "$2" 2>/dev/null || (( SECONDS > deadline )); then
      echo "$3 did not start; its log:" >&2; cat "$4" >&2; exit 1
    fi
    sleep 0.1
  done
}

# An OCI image layout at $2 holding the disk $1 as a containerDisk: one layer, a tar of
# disk/<name> owned by 107:107 (qemu, as KubeVirt's containerDisk docs build them), gzip -6
# (docker build's default level). Tag "bench"; the layer's hex digest in $2/layer.hex.
make_containerdisk() { # disk layout
  local disk=$1 layout=$2 tmp=$2.tmp name arch
  name=$(basename "$disk"); arch=$(dpkg --print-architecture)
  rm -rf "$tmp"; mkdir -p "$tmp/blobs/sha256" "$tmp/root/disk"
  ln "$disk" "$tmp/root/disk/$name" 2>/dev/null || cp "$disk" "$tmp/root/disk/$name"
  mkfifo "$tmp/tar.fifo"
  # The config's diff_id is the digest of the uncompressed tar: hashed as it is compressed.
  sha256sum <"$tmp/tar.fifo" >"$tmp/diff_id" &
  local hasher=$!
  tar --owner=107 --group=107 --numeric-owner --sort=name -C "$tmp/root" -cf - disk \
    | tee "$tmp/tar.fifo" | pigz -6 -n >"$tmp/layer"
  wait "$hasher"
  blob() { # file -> "hex size", moved into blobs/
    local hex size; hex=$(sha256sum "$1" | cut -d' ' -f1); size=$(stat -c %s "$1")
    mv "$1" "$tmp/blobs/sha256/$hex"; echo "$hex $size"
  }
  local lhex lsize chex csize mhex msize
  read -r lhex lsize < <(blob "$tmp/layer")
  printf '{"architecture":"%s","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$(cut -d' ' -f1 "$tmp/diff_id")" >"$tmp/config.json"
  read -r chex csize < <(blob "$tmp/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$chex" "$csize" "$lhex" "$lsize" >"$tmp/manifest.json"
  read -r mhex msize < <(blob "$tmp/manifest.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' \
    "$mhex" "$msize" >"$tmp/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$tmp/oci-layout"
  echo "$lhex" >"$tmp/layer.hex"
  rm -rf "$tmp/root" "$tmp/tar.fifo" "$tmp/diff_id"
  rm -rf "$layout"; mv "$tmp" "$layout"
}

# Debian's docker-registry on 127.0.0.1, plain HTTP, anonymous; sets REGISTRY_PORT.
start_registry() {
  if ! need docker-registry || ! need skopeo; then
    apt-get update -qq && apt-get install -y -qq docker-registry skopeo >/dev/null
  fi
  local dir=$BENCH_OUT/registry
  rm -rf "$dir"; mkdir -p "$dir"
  REGISTRY_PORT=$(free_port)
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir/storage" "$REGISTRY_PORT" >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  wait_http "http://127.0.0.1:$REGISTRY_PORT/v2/" "$REGISTRY_PID" docker-registry "$dir/registry.log"
}

# nginx on 127.0.0.1 serving the directory $1 (GET, HEAD, Range); sets NGINX_PORT.
start_nginx() { # root
  need nginx || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
  local p=$BENCH_OUT/nginx
  rm -rf "$p"; mkdir -p "$p/logs"
  NGINX_PORT=$(free_port)
  cat >"$p/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
error_log $p/logs/error.log warn;
pid $p/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $p/body; proxy_temp_path $p/proxy; fastcgi_temp_path $p/fcgi;
  uwsgi_temp_path $p/uwsgi; scgi_temp_path $p/scgi;
  types { application/octet-stream qcow2; }
  server { listen 127.0.0.1:$NGINX_PORT; root $1; }
}
CONF
  nginx -p "$p" -c "$p/nginx.conf" >/dev/null 2>&1 &
  NGINX_PID=$!
  wait_http "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID" nginx "$p/logs/error.log"
}

# moto's S3 server on 127.0.0.1 (it accepts any keys unless told otherwise); sets MOTO_PORT.
start_moto() {
  if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check 'moto[server]' >&2
  fi
  MOTO_PORT=$(free_port)
  moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$BENCH_OUT/moto.log" 2>&1 &
  MOTO_PID=$!
  wait_http "http://127.0.0.1:$MOTO_PORT/" "$MOTO_PID" moto_server "$BENCH_OUT/moto.log"
}

# A row's fields with the allocated bytes blanked (a download is no raw image to compare).
noalloc() { awk '{ $4 = "-"; print }' <<<"$1"; }

printf '%-10s %-44s %8s %8s %9s %14s %14s\n' case tool wall_s cpu_s rss_MiB alloc_bytes scratch_bytes
row() { # case tool "wall cpu rss alloc [scratch]"
  local wall cpu rss alloc scratch
  read -r wall cpu rss alloc scratch <<<"$3"
  printf '%-10s %-44s %8.2f %8.2f %9.1f %14s %14s\n' "$1" "$2" "$wall" "$cpu" "$(echo "$rss / 1024" | bc -l)" "$alloc" "${scratch:-0}"
}
ratio() { # case "cdi row" "best ref row" [label] [blank line after: yes|no]
  local cw cc cr ca rw rc rr ra
  read -r cw cc cr ca _ <<<"$2"
  read -r rw rc rr ra _ <<<"$3"
  local ar="-"
  if [ "$ca" != "-" ] && [ "$ra" != "-" ] && [ "$ra" -gt 0 ]; then ar=$(echo "scale=3; $ca / $ra" | bc); fi
  printf '%-10s %-44s %8.3f %8.3f %9.3f %14s\n' "$1" "${4:-ratio cdi/best}" "$(echo "$cw / $rw" | bc -l)" "$(echo "$cc / $rc" | bc -l)" "$(echo "$cr / $rr" | bc -l)" "$ar"
  if [ "${5:-yes}" = yes ]; then echo; fi
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
      LOOP_DEV=$dev
      # The device holds old data before every run, so zero ranges must really be zeroed.
      export PREP="{ tr '\\0' '\\377' </dev/zero || true; } | dd of=$dev bs=4M count=1024 iflag=fullblock oflag=direct status=none; sync; warm $src"
      pair "$dev" "$MOVER import $src $dev --progress none" "qemu-img convert -n -t none -W -O raw $src $dev"
      cdi=$PAIR_A ref=$PAIR_B
      "$MOVER" import "$src" "$dev" --progress none && qemu-img compare -f qcow2 -F raw "$src" "$dev" >&2
      unset PREP
      row "$c" "cdi-mover import → loop (held data)" "$cdi"
      row "$c" "qemu-img convert -n -t none -W → loop" "$ref"
      ratio "$c" "$cdi" "$ref"
      LOOP_DEV=; losetup -d "$dev"; rm -f "$backing"
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
    registry)
      src=$IMAGES/disk.qcow2
      layout=$IMAGES/containerdisk-oci
      if [ ! -f "$layout/layer.hex" ]; then make_containerdisk "$src" "$layout"; fi
      layer=$(cat "$layout/layer.hex")
      start_registry
      image=127.0.0.1:$REGISTRY_PORT/bench/disk:bench
      skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$layout:bench" "docker://$image" >&2
      find "$BENCH_OUT/registry/storage" -type f -exec cat {} + >/dev/null   # warm, as for files
      cdi_cmd="$MOVER import docker://$image $out --insecure-registry --progress none"
      $cdi_cmd && qemu-img compare -f qcow2 -F raw "$src" "$out" >&2
      dl=$BENCH_OUT/registry-dl scratch=$BENCH_OUT/registry-scratch
      pull="skopeo copy --quiet --src-tls-verify=false docker://$image"
      turns "$out" "$out||$cdi_cmd" "$dl||$pull dir:$dl" \
        "$out|$scratch|$pull dir:$scratch/image && mkdir $scratch/root && tar -I pigz -xf $scratch/image/$layer -C $scratch/root disk/disk.qcow2 && qemu-img convert -O raw $scratch/root/disk/disk.qcow2 $out"
      cdi=${TURNS[0]} bare=${TURNS[1]} cdiway=${TURNS[2]}
      rm -rf "$dl"
      row "$c" "cdi-mover import docker://" "$cdi"
      row "$c" "(a) skopeo copy docker:// dir:" "$bare"
      row "$c" "(b) (a) + tar -x disk + qemu-img convert" "$cdiway"
      ratio "$c" "$cdi" "$(noalloc "$bare")" "ratio cdi/(a) bare transfer" no
      ratio "$c" "$cdi" "$cdiway" "ratio cdi/(b) CDI's way"
      # CDI's importer streams the layer: its scratch holds the extracted disk alone.
      echo "# $c: layer $(stat -c %s "$layout/blobs/sha256/$layer") bytes (gzip -6); CDI's scratch = the extracted disk, $(allocated "$src") bytes allocated"
      echo
      kill "$REGISTRY_PID"; wait "$REGISTRY_PID" 2>/dev/null || true; REGISTRY_PID=
      rm -rf "$BENCH_OUT/registry"
      ;;
    s3)
      src=$IMAGES/disk.qcow2
      case ${S3_SERVER:-nginx} in
        moto)
          start_moto; port=$MOTO_PORT
          python3 - "http://127.0.0.1:$MOTO_PORT" "$src" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="bench-key", aws_secret_access_key="bench-secret")
s3.create_bucket(Bucket="bench")
s3.upload_file(sys.argv[2], "bench", "disk.qcow2")
PY
          ;;
        nginx)
          bucket=$BENCH_OUT/s3-root
          rm -rf "$bucket"; mkdir -p "$bucket/bench"
          ln "$src" "$bucket/bench/disk.qcow2" 2>/dev/null || cp "$src" "$bucket/bench/disk.qcow2"
          start_nginx "$bucket"; port=$NGINX_PORT
          ;;
        *) echo "S3_SERVER is nginx or moto, not ${S3_SERVER}" >&2; exit 2 ;;
      esac
      warm "$src"
      url=http://127.0.0.1:$port/bench/disk.qcow2
      creds=$BENCH_OUT/s3-creds
      printf 'bench-key\nbench-secret\n' >"$creds"
      cdi_cmd="$MOVER import --s3 $url $out --creds-file $creds --progress none"
      $cdi_cmd && qemu-img compare -f qcow2 -F raw "$src" "$out" >&2
      # Signed as cdi-mover signs (SigV4), with moto's any-key-goes default.
      get="curl -sSf --aws-sigv4 aws:amz:us-east-1:s3 --user bench-key:bench-secret"
      dl=$BENCH_OUT/s3-dl.qcow2 scratch=$BENCH_OUT/s3-scratch
      turns "$out" "$out||$cdi_cmd" "$dl||$get -o $dl $url" \
        "$out|$scratch|$get -o $scratch/disk.qcow2 $url && qemu-img convert -O raw $scratch/disk.qcow2 $out"
      cdi=${TURNS[0]} bare=${TURNS[1]} cdiway=${TURNS[2]}
      rm -f "$dl" "$creds"
      row "$c" "cdi-mover import --s3 (${S3_SERVER:-nginx})" "$cdi"
      row "$c" "(a) curl -o (SigV4)" "$bare"
      row "$c" "(b) (a) + qemu-img convert -O raw" "$cdiway"
      ratio "$c" "$cdi" "$(noalloc "$bare")" "ratio cdi/(a) bare transfer" no
      ratio "$c" "$cdi" "$cdiway" "ratio cdi/(b) CDI's way"
      if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID"; wait "$MOTO_PID" 2>/dev/null || true; MOTO_PID=; fi
      if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=; rm -rf "$BENCH_OUT/s3-root" "$BENCH_OUT/nginx"; fi
      ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
rm -f "$out"
