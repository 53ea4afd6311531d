#!/usr/bin/env bash
# make_images.sh - generate realistic "cloud-image-like" test disks for
# import/convert benchmarks (qcow2/raw, compressed qcow2, gz/xz/zst raw).
#
# Layout: VIRT_GIB virtual size, ~DATA_MIB MiB of non-zero data placed in
# extents (4 KiB .. 16 MiB, log-uniform, 4 KiB aligned) laid out sequentially
# with exponential gaps inside 128 MiB "block groups" of ext4-like density
# (dense at the start, sparser towards the end, every 7th group empty = large
# holes), 16 small fragmented "metadata" runs at each group start, a GPT-like
# header at LBA 0 and a backup header at the end.
# Each extent is either incompressible random bytes (RANDOM_FRAC) or
# text-like data (Zipf-distributed pseudo-words, punctuation, numbers,
# newlines; gzip ratio ~2.5-3x). Everything is deterministic for a given SEED.
#
# Outputs (in OUT_DIR):
#   disk.raw        sparse raw file (holes = zero regions)
#   disk.qcow2      qcow2 v3, 64 KiB clusters, uncompressed (qemu-img convert)
#   disk-c.qcow2    qcow2 with zlib-compressed clusters (qemu-img convert -c)
#   disk.raw.gz     gzip -6 (made with pigz; single-member, gzip-compatible)
#   disk.raw.xz     xz -6, multi-block (xz -T$THREADS -> 24 MiB blocks)
#   disk.raw.zst    zstd -3 (-T$THREADS)
#   layout.txt      extent list "offset length type"
#
# Usage: OUT_DIR=DIR VIRT_GIB=4 DATA_MIB=1300 mover/benches/make_images.sh  (defaults shown; 5-20 min on 2 cores, xz dominates: make once, keep the folder)
set -euo pipefail

OUT_DIR=${OUT_DIR:-./bench-images}
VIRT_GIB=${VIRT_GIB:-4}
DATA_MIB=${DATA_MIB:-1300}
RANDOM_FRAC=${RANDOM_FRAC:-0.35}
SEED=${SEED:-20240601}
THREADS=${THREADS:-$(nproc)}
PY=${PY:-python3}

mkdir -p "$OUT_DIR"
cd "$OUT_DIR"
rm -f disk.raw disk.qcow2 disk-c.qcow2 disk.raw.gz disk.raw.xz disk.raw.zst layout.txt

echo "== generating disk.raw (${VIRT_GIB} GiB virtual, ~${DATA_MIB} MiB data)"
"$PY" - "$VIRT_GIB" "$DATA_MIB" "$RANDOM_FRAC" "$SEED" <<'PYEOF'
import os, sys, random, math, zlib, time

virt_gib, data_mib, rfrac, seed = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
KiB, MiB = 1024, 1024 * 1024
BLK = 4 * KiB                       # fs block size / placement granularity
SIZE = virt_gib * 1024 * MiB
GROUP = 128 * MiB
NGROUPS = SIZE // GROUP
BPG = GROUP // BLK                  # blocks per group
target = data_mib * MiB

# ---------- text-like generator: Zipf pseudo-words + tokens ----------
letters = "etaoinshrdlcumwfgypbvkjxqz"
lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4,
      2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
vocab = set()
while len(vocab) < 12000:
    n = max(1, min(14, int(rng.gauss(6, 2.5))))
    vocab.add("".join(rng.choices(letters, lw, k=n)))
vocab = sorted(vocab)
rng.shuffle(vocab)
tokens = vocab + ["\n", "\n\n", ",", ".", "=", "/usr/lib/", "#", "{", "}", "(", ")",
                  "0", "1", "2", "true", "false", "None", "return", "if", "the"]
tokens += [str(rng.randrange(100000)) for _ in range(3000)]
rng.shuffle(tokens)
cum, acc = [], 0.0
for i in range(len(tokens)):
    acc += 1.0 / (i + 1) ** 1.05
    cum.append(acc)
tok_b = [t.encode() for t in tokens]

def text_bytes(n):
    out, have = [], 0
    while have < n:
        words = rng.choices(tok_b, cum_weights=cum, k=20000)
        piece = b" ".join(words)
        out.append(piece)
        have += len(piece)
    return b"".join(out)[:n]

def rand_bytes(n):
    return rng.randbytes(n)

# ---------- placement ----------
# per-group fill fraction: ext4-ish, dense near the start, sparser later,
# every 7th group empty (large holes); scaled so the total is ~DATA_MIB.
weights = []
for g in range(NGROUPS):
    f = g / max(1, NGROUPS - 1)
    w = 2.0 if f < 0.25 else (1.0 if f < 0.7 else 0.4)
    if g % 7 == 5:
        w = 0.0
    weights.append(w)
wsum = sum(weights)

extents = []                         # (offset, length, kind)
# GPT-like header (LBA0..33) and backup GPT at the very end
extents.append((0, 20 * KiB, "r"))
extents.append((SIZE - 20 * KiB, 20 * KiB, "r"))
lo_log, hi_log = math.log(BLK), math.log(16 * MiB)
mean_ext = (16 * MiB - BLK) / (hi_log - lo_log)   # mean of log-uniform
for g in range(NGROUPS):
    if weights[g] == 0:
        continue
    base = g * GROUP
    start = 256 if g == 0 else 0                  # 1 MiB partition alignment
    end = BPG - 256 if g == NGROUPS - 1 else BPG
    gtarget = target * weights[g] / wsum
    placed = 0
    # fragmented "metadata" at group start: 16 x (64 KiB data + 192 KiB gap)
    for i in range(16):
        extents.append((base + (start + i * 64) * BLK, 16 * BLK, "t"))
        placed += 16 * BLK
    pos = start + 16 * 64
    frac = min(0.95, gtarget / GROUP)
    mean_gap = 0.8 * mean_ext * (1 - frac) / frac   # 0.8: metadata area + tail slack
    # files laid out sequentially, separated by exponential free-space gaps
    while placed < gtarget and pos < end:
        pos += max(1, int(rng.expovariate(1.0 / mean_gap) // BLK))
        ln = max(1, int(math.exp(rng.uniform(lo_log, hi_log)) // BLK))
        ln = min(ln, end - pos, int((gtarget - placed) // BLK) + 1)
        if ln <= 0:
            break
        kind = "r" if rng.random() < rfrac else "t"
        extents.append((base + pos * BLK, ln * BLK, kind))
        placed += ln * BLK
        pos += ln

extents.sort()
t0 = time.time()
fd = os.open("disk.raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, SIZE)
tot = {"r": 0, "t": 0}
CH = 4 * MiB
for off, ln, kind in extents:
    done = 0
    while done < ln:
        n = min(CH, ln - done)
        buf = rand_bytes(n) if kind == "r" else text_bytes(n)
        os.pwrite(fd, buf, off + done)
        done += n
    tot[kind] += ln
os.fsync(fd)
os.close(fd)
with open("layout.txt", "w") as f:
    for off, ln, kind in extents:
        f.write(f"{off} {ln} {kind}\n")
sample = text_bytes(4 * MiB)
print(f"extents={len(extents)} random={tot['r']/MiB:.1f}MiB text={tot['t']/MiB:.1f}MiB "
      f"total={(tot['r']+tot['t'])/MiB:.1f}MiB text_zlib6_ratio="
      f"{len(sample)/len(zlib.compress(sample, 6)):.2f} gen_time={time.time()-t0:.1f}s")
PYEOF

echo "== disk.qcow2"
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
echo "== disk-c.qcow2 (compressed clusters, zlib)"
qemu-img convert -c -f raw -O qcow2 disk.raw disk-c.qcow2
echo "== disk.raw.gz"
if command -v pigz >/dev/null; then pigz -6 -p "$THREADS" -c disk.raw > disk.raw.gz
else gzip -6 -c disk.raw > disk.raw.gz; fi
echo "== disk.raw.zst"
if command -v zstd >/dev/null; then zstd -q -3 -T"$THREADS" -c disk.raw > disk.raw.zst; fi
echo "== disk.raw.xz"
xz -6 -T"$THREADS" -c disk.raw > disk.raw.xz
sync
ls -ls --block-size=1 "$OUT_DIR"
qemu-img info disk.qcow2 | grep -E 'virtual|disk size'
qemu-img info disk-c.qcow2 | grep -E 'virtual|disk size'
