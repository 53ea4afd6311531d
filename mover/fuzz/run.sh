#!/usr/bin/env bash
# Runs each cargo-fuzz target for MINUTES minutes of CPU time, one after another, and prints
# per target: wall time, CPU time, executions, corpus size, crashes. Not run in CI.
#
#   mover/fuzz/run.sh [MINUTES] [TARGET...]      (default: 10 minutes, every target)
#
# One fuzzer at a time, in-process (no -jobs/-fork), nice'd: the machine has 2 cores, shared.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); it builds on the stable toolchain without a
# sanitizer, the default here (SANITIZER=address needs nightly flags: RUSTC_BOOTSTRAP=1, and a
# full rebuild). The code under test has no unsafe of its own on these paths, and the
# invariant is "no panic, no hang, no unbounded allocation", which fuzz/src/lib.rs checks.
#
# Inputs found are kept in fuzz/target/corpus/<target> (the committed corpus in
# fuzz/corpus/<target> is only read; `cargo fuzz cmin` before committing new ones). A crash
# lands in fuzz/artifacts/<target>/: keep it there, under git, once fixed, as a regression
# input the test suite replays (tests/it/fuzz.rs).
set -euo pipefail

cd "$(dirname "$0")/.."
minutes=${1:-10}
shift || true
sanitizer=${SANITIZER:-none}
triple=$(rustc -vV | sed -n 's/^host: //p')
if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

# Inputs past this many bytes are never tried. The block-mapped formats need room for their
# smallest real images (vhdx puts its first data block past 4 MiB; vhd and vdi blocks are
# 1-2 MiB); the rest stay small so that each execution is quick.
max_len() {
    case $1 in
        vhd | vhdx | vdi) echo $((6 << 20)) ;;
        *) echo $((1 << 20)) ;;
    esac
}

# Sets `cpu` to the user + system CPU seconds of this shell's finished children. (`times` must
# run in this shell: in a command substitution it would see the subshell's children.)
cpu_file=$(mktemp)
trap 'rm -f "$cpu_file"' EXIT
read_cpu() {
    times >"$cpu_file"
    cpu=$(tail -n 1 "$cpu_file" | awk '{
        split($1, u, "m"); split($2, s, "m");
        printf "%.1f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
}

nice -n 10 cargo fuzz build --sanitizer "$sanitizer" --codegen-units 16
bin_dir=fuzz/target/$triple/release

summary=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t log_dir=fuzz/target/logs
    mkdir -p "$work" "$log_dir" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    crashes_before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    read_cpu
    cpu_start=$cpu wall_start=$(date +%s) execs=0 status=ok
    : >"$log_dir/$t.log"
    # Until the CPU time is reached: a run gets wall time, of which a nice'd process on a
    # shared machine may get less CPU.
    while :; do
        read_cpu
        left=$(awk -v m="$minutes" -v a="$cpu_start" -v b="$cpu" 'BEGIN { l = m * 60 - (b - a); print (l > 0 ? int(l + 0.999) : 0) }')
        [ "$left" -gt 0 ] || break
        [ "$left" -ge 20 ] || left=20
        rc=0
        nice -n 10 "$bin_dir/$t" -max_total_time="$left" -timeout=10 -rss_limit_mb=2048 \
            -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
            "$work" "fuzz/corpus/$t" >>"$log_dir/$t.log" 2>&1 || rc=$?
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$t.log" | tail -n 1)
        execs=$((execs + ${n:-0}))
        if [ "$rc" -ne 0 ]; then
            status="stopped (exit $rc): see $log_dir/$t.log"
            break
        fi
    done
    read_cpu
    used=$(awk -v a="$cpu_start" -v b="$cpu" 'BEGIN { printf "%.0f", b - a }')
    wall=$(($(date +%s) - wall_start))
    corpus=$(find "$work" "fuzz/corpus/$t" -type f | wc -l)
    crashes=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - crashes_before))
    line=$(printf '%-13s wall %5ss  cpu %5ss  execs %10s  corpus %5s  crashes %s  %s' \
        "$t" "$wall" "$used" "$execs" "$corpus" "$crashes" "$status")
    echo "$line"
    summary+=("$line")
done

echo
echo "fuzz run summary ($minutes CPU-minutes per target, sanitizer $sanitizer):"
printf '%s\n' "${summary[@]}"
