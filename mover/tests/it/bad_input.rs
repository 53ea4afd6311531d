//! Hostile and broken inputs: each is refused with a clear, specific error, leaves no image
//! behind, and never panics or hangs.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::support::*;

const SIZE: u64 = 16 * MIB;

fn qcow2(dir: &Path, opts: &[&str]) -> PathBuf {
    let raw = dir.join("src.raw");
    if !raw.exists() {
        make_raw(&raw, SIZE, 21);
    }
    let q = dir.join(format!("img{}.qcow2", opts.join("").replace(['=', ','], "_")));
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.push(s(&raw));
    args.push(s(&q));
    qemu_img(&args);
    q
}

fn be64(f: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(f).unwrap().read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn truncated_images_fail_instead_of_becoming_zeros() {
    let dir = tempdir();
    for opts in [&[][..], &["-c"][..]] {
        let q = qcow2(dir.path(), opts);
        let len = std::fs::metadata(&q).unwrap().len();
        let cut = dir.path().join("cut.qcow2");
        std::fs::copy(&q, &cut).unwrap();
        std::fs::File::options().write(true).open(&cut).unwrap().set_len(len * 6 / 10).unwrap();
        refused(dir.path(), &cut, &["beyond the end of the image", "truncated"]);
        refused(dir.path(), &gzip(&cut), &["truncated"]);
    }
    // An extended-L2 image ending inside its last, partly written cluster, cut inside the
    // written subclusters: still truncation.
    let q = dir.path().join("sparse-tail.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", "extended_l2=on", s(&q), "16M"]);
    qemu_io(s(&q), &["write -P 0x5a 5m 8k"]);
    let len = std::fs::metadata(&q).unwrap().len();
    std::fs::File::options().write(true).open(&q).unwrap().set_len(len - 2048).unwrap();
    refused(dir.path(), &q, &["beyond the end of the image"]);
    refused(dir.path(), &gzip(&q), &["truncated"]);
    // A truncated gzip stream of a raw image.
    let raw = dir.path().join("src.raw");
    let gz = gzip(&raw);
    let len = std::fs::metadata(&gz).unwrap().len();
    std::fs::File::options().write(true).open(&gz).unwrap().set_len(len / 2).unwrap();
    refused(dir.path(), &gz, &["gzip", "truncated"]);
}

#[test]
fn absurd_header_fields_are_named() {
    let dir = tempdir();
    let q = qcow2(dir.path(), &[]);
    let cases: [(&str, u64, &[u8]); 6] = [
        ("cluster_bits", 20, &70u32.to_be_bytes()),
        ("cluster_bits", 20, &8u32.to_be_bytes()),
        ("size", 24, &u64::MAX.to_be_bytes()),
        ("l1_size", 36, &0x7fff_ffffu32.to_be_bytes()),
        ("l1_table_offset", 40, &12345u64.to_be_bytes()),
        ("version", 4, &9u32.to_be_bytes()),
    ];
    for (field, at, bytes) in cases {
        let bad = dir.path().join(format!("bad-{field}-{at}.qcow2"));
        std::fs::copy(&q, &bad).unwrap();
        poke(&bad, at, bytes);
        refused(dir.path(), &bad, &["invalid qcow2 header", field]);
        refused(dir.path(), &gzip(&bad), &["invalid qcow2 header", field]);
    }
    // A header cut short.
    let short = dir.path().join("short.qcow2");
    std::fs::write(&short, &std::fs::read(&q).unwrap()[..60]).unwrap();
    refused(dir.path(), &short, &["truncated"]);
}

#[test]
fn tables_pointing_outside_the_image_are_refused() {
    let dir = tempdir();
    let q = qcow2(dir.path(), &[]);
    let len = std::fs::metadata(&q).unwrap().len();
    let l1 = be64(&q, 40);

    let bad = dir.path().join("l1.qcow2");
    std::fs::copy(&q, &bad).unwrap();
    poke(&bad, l1, &((len + (1 << 30)) | (1 << 63)).to_be_bytes());
    refused(dir.path(), &bad, &["L2 table", "beyond the end of the image"]);
    refused(dir.path(), &gzip(&bad), &["L2 table", "truncated"]);

    let bad = dir.path().join("l1-unaligned.qcow2");
    std::fs::copy(&q, &bad).unwrap();
    poke(&bad, l1, &(be64(&q, l1) + 512).to_be_bytes());
    refused(dir.path(), &bad, &["not aligned"]);

    // The first data cluster's L2 entry pointing past the end.
    let l2 = be64(&q, l1) & 0x00ff_ffff_ffff_fe00;
    let entry = (0..8192u64).map(|i| l2 + i * 8).find(|&at| be64(&q, at) != 0).expect("an allocated cluster");
    let bad = dir.path().join("l2.qcow2");
    std::fs::copy(&q, &bad).unwrap();
    poke(&bad, entry, &((len.next_multiple_of(65536) + (64 << 20)) | (1 << 63)).to_be_bytes());
    refused(dir.path(), &bad, &["data cluster", "beyond the end of the image"]);
    refused(dir.path(), &gzip(&bad), &["data cluster", "truncated"]);
}

#[test]
fn backing_files_data_files_and_encryption_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    let base = qcow2(d, &[]);
    let overlay = d.join("overlay.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", s(&base), "-F", "qcow2", s(&overlay)]);
    refused(d, &overlay, &["backing file", s(&base)]);
    refused(d, &gzip(&overlay), &["backing file"]);

    let data_file = d.join("external.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", &format!("data_file={}", s(&d.join("data.raw"))), s(&data_file), "16M"]);
    refused(d, &data_file, &["external data file"]);

    let enc = d.join("enc.qcow2");
    qemu_img(&[
        "create",
        "--object",
        "secret,id=sec0,data=123456",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        s(&enc),
        "16M",
    ]);
    refused(d, &enc, &["encrypted", "LUKS"]);

    let unknown = d.join("unknown.qcow2");
    std::fs::copy(&base, &unknown).unwrap();
    poke(&unknown, 72, &(1u64 << 20).to_be_bytes());
    refused(d, &unknown, &["incompatible features", "bit 20"]);
}

#[test]
fn corrupt_compressed_data_is_refused() {
    let dir = tempdir();
    for codec in ["zlib", "zstd"] {
        let q = qcow2(dir.path(), &["-c", "-o", &format!("compression_type={codec}")]);
        // Find a compressed cluster through the tables and garble its bytes.
        let l2 = be64(&q, be64(&q, 40)) & 0x00ff_ffff_ffff_fe00;
        let host = (0..8192u64)
            .map(|i| be64(&q, l2 + i * 8))
            .find(|e| e & (1 << 62) != 0)
            .map(|e| e & ((1u64 << 54) - 1))
            .expect("a compressed cluster");
        let bad = dir.path().join(format!("garbled-{codec}.qcow2"));
        std::fs::copy(&q, &bad).unwrap();
        poke(&bad, host, &[0xff; 64]);
        refused(dir.path(), &bad, &["compressed data", "cannot be decompressed"]);
        refused(dir.path(), &gzip(&bad), &["compressed data"]);
    }
    // A corrupt outer gzip stream.
    let gz = gzip(&dir.path().join("src.raw"));
    poke(&gz, 4096, &[0x55; 512]);
    refused(dir.path(), &gz, &["gzip"]);
}

#[test]
fn images_larger_than_the_target_are_refused_before_writing() {
    let dir = tempdir();
    let q = qcow2(dir.path(), &[]);
    let res = import(s(&q), &dir.path().join("out.raw"), &["--size", &(SIZE - MIB).to_string()]);
    assert_refused(
        &res,
        &[&format!("virtual image size {SIZE} is larger than the reported available storage {}", SIZE - MIB)],
    );

    // A volume: the usable space is CDI's, overhead included. 16 MiB / 1.06 → 15 MiB.
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let res = import(s(&q), &vol, &["--size", &SIZE.to_string()]);
    assert_refused(
        &res,
        &[&format!("virtual image size {SIZE} is larger than the reported available storage {}", 15 * MIB)],
    );
    assert_eq!(std::fs::read_dir(&vol).unwrap().count(), 0);

    // A block device smaller than the image keeps its old data.
    let dev = LoopDev::new(dir.path(), SIZE / 2, 3);
    let mut before = vec![0u8; MIB as usize];
    std::fs::File::open(&dev.path).unwrap().read_exact_at(&mut before, 0).unwrap();
    assert_refused(&import(s(&gzip(&q)), &dev.path, &[]), &["larger than the reported available storage"]);
    let mut after = vec![0u8; MIB as usize];
    std::fs::File::open(&dev.path).unwrap().read_exact_at(&mut after, 0).unwrap();
    assert_eq!(before, after, "the device was written to");
}

/// Random corruption of the metadata area never panics or hangs: every outcome is either a
/// complete image or a clean error. Runs in-process on the library.
#[test]
fn mutated_images_never_panic() {
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, 2 * MIB, 9);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut rng = Rng::new(1234);
    for opts in
        [&["-o", "cluster_size=4096"][..], &["-c", "-o", "cluster_size=4096"][..], &["-o", "extended_l2=on"][..]]
    {
        let q = dir.path().join("m.qcow2");
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[s(&raw), s(&q)]);
        qemu_img(&args);
        let pristine = std::fs::read(&q).unwrap();
        let cluster = 1u64 << u32::from_be_bytes(pristine[20..24].try_into().unwrap());
        // The header, refcount and L1/L2 tables sit in the first clusters.
        let meta_end = (pristine.len() as u64).min(5 * cluster);
        let mut outcomes = [0u32; 2];
        for round in 0..60 {
            let mut bytes = pristine.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = if rng.next().is_multiple_of(2) { rng.next() % 112 } else { rng.next() % meta_end } as usize;
                bytes[at] = rng.next() as u8;
            }
            let m = dir.path().join("mut.qcow2");
            std::fs::write(&m, &bytes).unwrap();
            for source in [m.clone(), gzip(&m)] {
                let ok = import_in_process(&rt, &source, &dir.path().join("mut.raw"), &format!("round {round}"));
                outcomes[usize::from(!ok)] += 1;
            }
        }
        assert!(outcomes[1] > 0, "{opts:?}: no mutation was refused, so none reached the parser: {outcomes:?}");
    }
}
