#!/usr/bin/env bash
# demo.sh - the whole of cdi-rs on the embedded default, no real cluster needed: builds the
# mover, the populator and the mini-cluster (release), then `cdi-e2e demo` starts the
# mini-cluster, installs cdi-rs on it with `kubectl apply -k deploy/` (the populator
# Deployment, a mover pod per node from the DaemonSet), serves a generated qcow2 over
# local HTTP, creates a VolumeImportSource and two PVCs (Filesystem and Block) whose
# dataSourceRef names it, prints progress until both are Bound, shows `kubectl get pvc`, the
# events and a checksum of each volume against the image; then a stand-in VirtualMachine whose
# dataVolumeTemplate becomes a DataVolume of the same image (progress until Succeeded,
# `kubectl get dv`, its checksum), deletes the VM (DataVolume, PVC and PV go with it), and
# cleans everything up.
#
# Usage: ./demo.sh [--dir WORK_DIR] [--disk-gib N]     (run as root: it makes loop devices)
set -euo pipefail
repo=$(cd "$(dirname "$0")" && pwd)

need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v kubectl >/dev/null; then
  echo "kubectl is needed: the demo installs cdi-rs with kubectl apply -k deploy/, as on any cluster" >&2
  exit 1
fi

echo "== building cdi-mover, cdi-populator and cdi-e2e (release)"
cargo build --release -q -p cdi-mover -p cdi-populator -p cdi-e2e --manifest-path "$repo/Cargo.toml"
exec "$repo/target/release/cdi-e2e" demo "$@"
