#!/usr/bin/env bash
# Folds what run.sh found (fuzz/target/corpus/<target>) into the committed corpus
# (fuzz/corpus/<target>): only inputs that add coverage to what is committed (libFuzzer's
# -merge=1, what `cargo fuzz cmin` runs, counting edges but not their hit counts), and only
# those of at most MAX_KIB KiB (default 32; 6 MiB for vhd, vhdx and vdi, whose smallest
# images are MiBs of mostly zeros, a few KiB in git), so the corpus stays small in git. The
# committed seeds are kept as they are.
#
#   mover/fuzz/cmin.sh [TARGET...]      (default: every target)
set -euo pipefail

cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

for t in "${targets[@]}"; do
    found=fuzz/target/corpus/$t
    case $t in
        vhd | vhdx | vdi) max_kib=${MAX_KIB:-6144} ;;
        *) max_kib=${MAX_KIB:-32} ;;
    esac
    [ -d "$found" ] || continue
    small=$(mktemp -d)
    find "$found" -type f -size -"$((max_kib + 1))"k -exec cp {} "$small/" \;
    before=$(find "fuzz/corpus/$t" -type f | wc -l)
    nice -n 10 "$bin_dir/$t" -merge=1 -use_counters=0 -timeout=10 -rss_limit_mb=2048 "fuzz/corpus/$t" "$small" \
        >"fuzz/target/logs/$t.cmin.log" 2>&1
    rm -rf "$small"
    after=$(find "fuzz/corpus/$t" -type f | wc -l)
    echo "$t: $before -> $after files, $(du -sk --apparent-size "fuzz/corpus/$t" | cut -f1) KiB"
done
