//! VMDK against qemu-img: monolithicSparse and streamOptimized images (qemu's, and one laid
//! out as VMware writes them), imported from a file (random access) and from a gzip stream
//! (one pass), into a file and into a loop device that held random data, then compared with
//! `qemu-img compare`. Split, flat and differencing disks, and hostile edits of real images,
//! are refused with a clear error, never a panic, and leave nothing behind.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Virtual size of the matrix images: several grain tables (32 MiB each), quick to convert.
const SIZE: u64 = 40 * MIB;
/// qemu's and VMware's grain: 128 sectors.
const GRAIN: u64 = 64 << 10;
const SECTOR: u64 = 512;

fn le32(f: &Path, at: u64) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(f).unwrap().read_exact_at(&mut b, at).unwrap();
    u32::from_le_bytes(b)
}

fn le64(f: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(f).unwrap().read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

/// `qemu-img convert` of a fresh raw disk of `size` bytes to the vmdk `subformat`.
fn convert(dir: &Path, subformat: &str, size: u64, extra: &str) -> PathBuf {
    let raw = dir.join(format!("src-{size}.raw"));
    if !raw.exists() {
        make_raw(&raw, size, 11);
    }
    let img = dir.join(format!("{subformat}-{size}.vmdk"));
    let opts = format!("subformat={subformat}{extra}");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &opts, s(&raw), s(&img)]);
    img
}

/// Builds the variant; returns the image and its virtual size.
fn build(dir: &Path, variant: &str) -> (PathBuf, u64) {
    let odd = SIZE + 1536; // ends three sectors into a grain
    match variant {
        "sparse" => (convert(dir, "monolithicSparse", SIZE, ""), SIZE),
        "sparse-odd-size" => (convert(dir, "monolithicSparse", odd, ""), odd),
        "stream" => (convert(dir, "streamOptimized", SIZE, ""), SIZE),
        // qemu compresses the last grain only up to the disk's end.
        "stream-odd-size" => (convert(dir, "streamOptimized", odd, ""), odd),
        "zeroed-grains" => {
            let img = convert(dir, "monolithicSparse", SIZE, ",zeroed_grain=on");
            // Whole-grain zero writes become GTE 1, over data grains and unallocated ones.
            let mut io = Command::new("qemu-io");
            io.args(["-f", "vmdk"]);
            for cmd in ["write -z 0 1m", "write -z 5m 3m", "write -z 39m 1m"] {
                io.arg("-c").arg(cmd);
            }
            run(io.arg(&img));
            (img, SIZE)
        }
        "vmware-stream" => {
            let raw = dir.join(format!("src-{odd}.raw"));
            make_raw(&raw, odd, 11);
            let img = dir.join("vmware.vmdk");
            vmware_stream(&raw, &img);
            (img, odd)
        }
        other => panic!("unknown variant {other}"),
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A streamOptimized image laid out as VMware writes it: the header says the grain
/// directory is at the end; grains, each grain table after its grains, the directory, a
/// footer holding the real directory offset, and an end-of-stream marker. Unlike qemu,
/// the last grain is compressed whole (zeros past the disk's end).
fn vmware_stream(raw: &Path, img: &Path) {
    let data = std::fs::read(raw).unwrap();
    let capacity = data.len() as u64 / SECTOR;
    let grains = capacity.div_ceil(GRAIN / SECTOR);
    let tables = grains.div_ceil(512);
    let header = |gd_offset: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[..4].copy_from_slice(b"KDMV");
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[8..12].copy_from_slice(&(1u32 | (1 << 16) | (1 << 17)).to_le_bytes());
        h[12..20].copy_from_slice(&capacity.to_le_bytes());
        h[20..28].copy_from_slice(&(GRAIN / SECTOR).to_le_bytes());
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        h[44..48].copy_from_slice(&512u32.to_le_bytes());
        h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
        h[64..72].copy_from_slice(&128u64.to_le_bytes());
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&1u16.to_le_bytes());
        h
    };
    let marker = |value: u64, kind: u32| {
        let mut m = vec![0u8; SECTOR as usize];
        m[..8].copy_from_slice(&value.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        m
    };
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(SECTOR as usize), 0);
    let mut out = header(u64::MAX);
    out.extend_from_slice(
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=a1b2c3d4\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
             RW {capacity} SPARSE \"vmware.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"
        )
        .as_bytes(),
    );
    out.resize(128 * SECTOR as usize, 0);
    let mut gd = vec![0u8; (tables * 4) as usize];
    for t in 0..tables {
        let mut gt = vec![0u8; 2048];
        for g in t * 512..((t + 1) * 512).min(grains) {
            let start = (g * GRAIN) as usize;
            let mut grain = data[start..(start + GRAIN as usize).min(data.len())].to_vec();
            if grain.iter().all(|&b| b == 0) {
                continue;
            }
            grain.resize(GRAIN as usize, 0);
            let z = zlib(&grain);
            let at = out.len() as u64 / SECTOR;
            gt[((g % 512) * 4) as usize..][..4].copy_from_slice(&(at as u32).to_le_bytes());
            out.extend_from_slice(&(g * GRAIN / SECTOR).to_le_bytes());
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
            pad(&mut out);
        }
        out.extend_from_slice(&marker(4, 1));
        gd[(t * 4) as usize..][..4].copy_from_slice(&((out.len() as u64 / SECTOR) as u32).to_le_bytes());
        out.extend_from_slice(&gt);
    }
    out.extend_from_slice(&marker(gd.len().div_ceil(SECTOR as usize) as u64, 2));
    let gd_offset = out.len() as u64 / SECTOR;
    out.extend_from_slice(&gd);
    pad(&mut out);
    out.extend_from_slice(&marker(1, 3));
    out.extend_from_slice(&header(gd_offset));
    out.extend_from_slice(&marker(0, 0));
    std::fs::write(img, out).unwrap();
}

/// Imports `variant` from the file and from a gzip stream, into a file and into a loop
/// device, and compares each result with the image.
fn check(variant: &str) {
    let dir = tempdir();
    let (img, size) = build(dir.path(), variant);
    let gz = gzip(&img);
    for (delivery, source) in [("file", &img), ("gz stream", &gz)] {
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        let res = import(s(source), &out, &[]);
        assert_ok(&res);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "{variant} via {delivery}: file size");
        assert_same(&img, "vmdk", &out);

        let dev = LoopDev::new(dir.path(), size, 99);
        assert_ok(&import(s(source), &dev.path, &[]));
        assert_same(&img, "vmdk", &dev.path);
    }
    if variant.starts_with("stream") || variant == "vmware-stream" {
        // Chunks of one grain: incompressible grains (a bit over 64 KiB compressed) take the
        // path that inflates them on the decoding thread.
        let dev = LoopDev::new(dir.path(), size, 98);
        assert_ok(&import(s(&img), &dev.path, &["--chunk-size", "65536"]));
        assert_same(&img, "vmdk", &dev.path);
    }
}

#[test]
fn monolithic_sparse() {
    check("sparse");
}
#[test]
fn monolithic_sparse_size_not_a_grain_multiple() {
    check("sparse-odd-size");
}
#[test]
fn monolithic_sparse_zeroed_grains_over_old_data() {
    check("zeroed-grains");
}
#[test]
fn stream_optimized() {
    check("stream");
}
#[test]
fn stream_optimized_size_not_a_grain_multiple() {
    check("stream-odd-size");
}
#[test]
fn stream_optimized_as_vmware_lays_it_out() {
    check("vmware-stream");
}

/// Refused from the file and from a gzip stream alike.
fn refused_both(dir: &Path, src: &Path, needles: &[&str]) {
    refused(dir, src, needles);
    refused(dir, &gzip(src), needles);
}

#[test]
fn split_flat_and_differencing_disks_are_refused_by_name() {
    let dir = tempdir();
    let d = dir.path();
    for subformat in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "monolithicFlat"] {
        let descriptor = convert(d, subformat, 4 * MIB, "");
        refused_both(d, &descriptor, &["vmdk", subformat, "several files"]);
    }
    // The data file of a split disk, on its own.
    let piece = d.join(format!("twoGbMaxExtentSparse-{}-s001.vmdk", 4 * MIB));
    refused_both(d, &piece, &["vmdk", "split-disk extent", "several files"]);
    // A differencing disk names its parent in the embedded descriptor.
    let base = d.join("base.vmdk");
    let child = d.join("child.vmdk");
    qemu_img(&["create", "-f", "vmdk", s(&base), "4M"]);
    qemu_img(&["create", "-f", "vmdk", "-b", s(&base), "-F", "vmdk", s(&child)]);
    refused_both(d, &child, &["vmdk", "differencing", "base.vmdk"]);
}

/// Where qemu put the grain directory and the first grain table of `img`, in bytes.
fn tables(img: &Path) -> (u64, u64) {
    let gd = le64(img, 56) * SECTOR;
    (gd, u64::from(le32(img, gd)) * SECTOR)
}

/// The host offsets of the grain markers of qemu's streamOptimized `img`.
fn markers(img: &Path) -> Vec<u64> {
    let len = std::fs::metadata(img).unwrap().len();
    let mut at = le64(img, 64) * SECTOR;
    let mut found = Vec::new();
    while at + 12 <= len {
        let size = le32(img, at + 8);
        if size == 0 {
            break;
        }
        found.push(at);
        at += (12 + u64::from(size)).next_multiple_of(SECTOR);
    }
    found
}

#[test]
fn hostile_monolithic_sparse_images_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let img = convert(d, "monolithicSparse", 8 * MIB, "");
    let (gd, gt) = tables(&img);
    let edited = |name: &str, at: u64, bytes: &[u8]| {
        let e = d.join(name);
        std::fs::copy(&img, &e).unwrap();
        poke(&e, at, bytes);
        e
    };
    let e = edited("gd-out.vmdk", gd, &0x7fff_ff00u32.to_le_bytes());
    refused_both(d, &e, &["vmdk", "grain table at host offset"]);
    let e = edited("gt-out.vmdk", gt, &0x7fff_ff00u32.to_le_bytes());
    refused_both(d, &e, &["vmdk", "data block", "truncated"]);
    let e = edited("gt-meta.vmdk", gt, &3u32.to_le_bytes());
    refused_both(d, &e, &["vmdk", "inside the metadata"]);
    let e = edited("capacity.vmdk", 12, &(1u64 << 50).to_le_bytes());
    refused_both(d, &e, &["invalid vmdk header", "capacity"]);
    let e = edited("grain.vmdk", 20, &100u64.to_le_bytes());
    refused_both(d, &e, &["invalid vmdk header", "grain size is 100"]);
    let e = edited("version.vmdk", 4, &4u32.to_le_bytes());
    refused_both(d, &e, &["invalid vmdk header", "version is 4"]);
    let e = edited("ascii.vmdk", 75, b"\n");
    refused_both(d, &e, &["vmdk", "binary mode"]);
    let bytes = std::fs::read(&img).unwrap();
    let at = bytes.windows(18).position(|w| w == b"parentCID=ffffffff").expect("qemu writes a parentCID") as u64;
    let e = edited("parent.vmdk", at, b"parentCID=00c0ffee");
    refused_both(d, &e, &["differencing", "CID 00c0ffee"]);

    // Cut inside the data: the grains the tables promise are missing.
    let len = std::fs::metadata(&img).unwrap().len();
    let cut = d.join("cut.vmdk");
    std::fs::copy(&img, &cut).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(len / 2 + 100).unwrap();
    refused_both(d, &cut, &["vmdk", "truncated"]);
    // Cut inside the header.
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(300).unwrap();
    refused_both(d, &cut, &["vmdk header is truncated"]);
}

#[test]
fn hostile_stream_optimized_images_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let img = convert(d, "streamOptimized", 8 * MIB, "");
    let grains = markers(&img);
    assert!(grains.len() > 10, "too few grains to edit: {grains:?}");
    let (_, gt) = tables(&img);
    let lba = |i: usize| le64(&img, grains[i]);
    let edited = |name: &str, at: u64, bytes: &[u8]| {
        let e = d.join(name);
        std::fs::copy(&img, &e).unwrap();
        poke(&e, at, bytes);
        e
    };
    let e = edited("misaligned.vmdk", grains[3], &(lba(3) + 1).to_le_bytes());
    refused_both(d, &e, &["vmdk", "does not start a grain"]);
    let e = edited("beyond.vmdk", grains[3], &(8 * MIB / SECTOR).to_le_bytes());
    refused_both(d, &e, &["vmdk", "past the disk"]);
    let e = edited("twice.vmdk", grains[3], &lba(2).to_le_bytes());
    refused_both(d, &e, &["vmdk", "appears twice"]);
    let e = edited("huge.vmdk", grains[3] + 8, &0x00ff_ffffu32.to_le_bytes());
    refused_both(d, &e, &["vmdk", "more than twice the grain size"]);
    let e = edited("garbled.vmdk", grains[3] + 12, &[0x55; 32]);
    refused_both(d, &e, &["compressed data for guest offset", "cannot be decompressed"]);
    let e = edited("unknown-marker.vmdk", grains[3] + 8, &[0, 0, 0, 0, 9, 0, 0, 0]);
    refused_both(d, &e, &["vmdk", "unknown marker type 9"]);
    let e = edited("compression.vmdk", 77, &2u16.to_le_bytes());
    refused_both(d, &e, &["invalid vmdk header", "compression algorithm is 2"]);
    // A grain the table does not name (qemu would never read it).
    let index = lba(3) / (GRAIN / SECTOR);
    let e = edited("untabled.vmdk", gt + index * 4, &0u32.to_le_bytes());
    refused_both(d, &e, &["vmdk", "not in the grain table"]);

    // Cut at a grain boundary: nothing marks the end, but the tables name what is missing.
    let cut = d.join("cut.vmdk");
    std::fs::copy(&img, &cut).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(grains[grains.len() - 3]).unwrap();
    refused_both(d, &cut, &["vmdk", "truncated"]);
    // Cut inside a grain.
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(grains[5] + 100).unwrap();
    refused_both(d, &cut, &["vmdk", "truncated"]);
}

#[test]
fn hostile_vmware_stream_optimized_images_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let raw = d.join("src.raw");
    make_raw(&raw, 8 * MIB, 12);
    let img = d.join("vmware.vmdk");
    vmware_stream(&raw, &img);
    let len = std::fs::metadata(&img).unwrap().len();
    // Without its end-of-stream marker (and footer) the end cannot be told from a cut.
    let cut = d.join("cut.vmdk");
    std::fs::copy(&img, &cut).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(len - 3 * SECTOR).unwrap();
    refused_both(d, &cut, &["vmdk", "end-of-stream marker", "truncated"]);
    // A footer describing another disk than the header.
    let e = d.join("footer.vmdk");
    std::fs::copy(&img, &e).unwrap();
    poke(&e, len - 2 * SECTOR + 12, &(16 * MIB / SECTOR).to_le_bytes());
    refused_both(d, &e, &["vmdk", "footer", "another disk"]);
}

/// Random corruption of the metadata never panics or hangs: every outcome is a complete
/// image or a clean error that leaves nothing behind. In-process, on the library.
#[test]
fn mutated_vmdks_never_panic() {
    let dir = tempdir();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut rng = Rng::new(77);
    for subformat in ["monolithicSparse", "streamOptimized"] {
        let img = convert(dir.path(), subformat, 2 * MIB, "");
        let pristine = std::fs::read(&img).unwrap();
        // Header, descriptor, directories and tables fill the first 64 KiB; the first
        // grains (and their markers) follow.
        let meta_end = (pristine.len() as u64).min(80 << 10);
        let mut outcomes = [0u32; 2];
        for round in 0..40 {
            let mut bytes = pristine.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = match rng.next() % 3 {
                    0 => rng.next() % 80,
                    1 => (64 << 10) + rng.next() % (meta_end - (64 << 10)),
                    _ => rng.next() % meta_end,
                } as usize;
                bytes[at] = rng.next() as u8;
            }
            let m = dir.path().join("mut.vmdk");
            std::fs::write(&m, &bytes).unwrap();
            for source in [m.clone(), gzip(&m)] {
                let ok =
                    import_in_process(&rt, &source, &dir.path().join("mut.raw"), &format!("{subformat} round {round}"));
                outcomes[usize::from(!ok)] += 1;
            }
        }
        assert!(outcomes[1] > 0, "{subformat}: no mutation was refused, so none reached the parser: {outcomes:?}");
    }
}
