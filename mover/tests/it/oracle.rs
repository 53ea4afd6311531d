//! qemu-img as the oracle: every qcow2 feature the reader claims, imported from a file
//! (random access) and from a gzip stream (one pass), into a file and into a loop device
//! that held random data, then `qemu-img compare`d against the image itself.

use std::path::{Path, PathBuf};

use crate::support::*;

/// Virtual size of the matrix images: big enough for several L2 tables at small cluster
/// sizes, small enough to keep the suite quick.
const SIZE: u64 = 40 * MIB;

/// Builds the variant's qcow2 from a fresh raw disk; returns the image and its virtual size.
fn build(dir: &Path, variant: &str) -> (PathBuf, u64) {
    let raw = dir.join("src.raw");
    let q = dir.join(format!("{variant}.qcow2"));
    let qs = s(&q).to_string();
    let size = if variant == "odd-size" { SIZE + 1536 } else { SIZE };
    make_raw(&raw, size, 7);
    let convert = |opts: &[&str]| {
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.push(s(&raw));
        args.push(&qs);
        qemu_img(&args);
    };
    match variant {
        "v3" | "odd-size" => convert(&[]),
        "v2" => convert(&["-o", "compat=0.10"]),
        "v2-compressed" => convert(&["-c", "-o", "compat=0.10"]),
        "cluster-512" => convert(&["-o", "cluster_size=512"]),
        "cluster-4k" => convert(&["-o", "cluster_size=4096"]),
        "cluster-2m" => convert(&["-o", "cluster_size=2M"]),
        "zlib" => convert(&["-c"]),
        "zstd" => convert(&["-c", "-o", "compression_type=zstd"]),
        "zstd-4k" => convert(&["-c", "-o", "compression_type=zstd,cluster_size=4096"]),
        "extended-l2" => {
            convert(&["-o", "extended_l2=on,cluster_size=128k"]);
            // Small writes into unallocated clusters leave them partly allocated; zero
            // writes set subcluster zero bits inside allocated ones.
            qemu_io(
                &qs,
                &["write -P 0xab 1m 4k", "write -P 0xcd 9502720 8k", "write -z 2101248 8k", "write -z 30m 128k"],
            );
        }
        "extended-l2-sparse-tail" => {
            // The last allocated cluster has only its first subclusters written, and the file
            // ends right after them, as qemu leaves it after a small write into a fresh image.
            qemu_img(&["create", "-f", "qcow2", "-o", "extended_l2=on", &qs, &SIZE.to_string()]);
            qemu_io(&qs, &["write -P 0x11 1m 64k", "write -P 0x5a 5m 4k"]);
            let len = std::fs::metadata(&q).unwrap().len();
            assert_eq!(len % (64 << 10), 4096, "the fixture must end inside a cluster");
        }
        "zero-clusters" => {
            convert(&[]);
            qemu_io(&qs, &["write -z 0 1m", "write -z 5m 3m", "write -z 39m 1m"]);
        }
        "snapshot" => {
            convert(&[]);
            qemu_img(&["snapshot", "-c", "before", &qs]);
            qemu_io(&qs, &["write -P 0x11 0 2m", "write -z 10m 2m", "write -P 0x22 20972032 64k"]);
            qemu_img(&["snapshot", "-c", "after", &qs]);
            qemu_io(&qs, &["write -P 0x33 3m 1m"]);
        }
        "prealloc-metadata" => {
            qemu_img(&["create", "-f", "qcow2", "-o", "preallocation=metadata", &qs, &SIZE.to_string()]);
            qemu_io(&qs, &["write -P 0x5a 0 1m", "write -P 0xa5 17m 3m", "write -P 0x01 39m 1m"]);
        }
        "dirty" => {
            convert(&["-o", "lazy_refcounts=on"]);
            set_incompatible_bits(&q, 1); // the dirty bit, as a crashed writer leaves it
        }
        "corrupt-bit" => {
            convert(&[]);
            set_incompatible_bits(&q, 2);
        }
        other => panic!("unknown variant {other}"),
    }
    (q, size)
}

fn set_incompatible_bits(q: &Path, bits: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(q).unwrap();
    let mut v = [0u8; 8];
    f.read_exact_at(&mut v, 72).unwrap();
    let new = u64::from_be_bytes(v) | bits;
    f.write_all_at(&new.to_be_bytes(), 72).unwrap();
}

/// Imports `variant` four ways and compares each result with the image.
fn check(variant: &str) {
    let dir = tempdir();
    let (q, size) = build(dir.path(), variant);
    // qemu refuses to read images with the corrupt bit; its converted raw is the oracle then.
    let (oracle, oracle_fmt) =
        if variant == "corrupt-bit" { (dir.path().join("src.raw"), "raw") } else { (q.clone(), "qcow2") };
    let gz = dir.path().join(format!("{variant}.qcow2.gz"));
    run(std::process::Command::new("sh").arg("-c").arg(format!("gzip -1 -c {} > {}", s(&q), s(&gz))));

    for (delivery, source) in [("file", &q), ("gz stream", &gz)] {
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        let res = import(s(source), &out, &[]);
        assert_ok(&res);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "{variant} via {delivery}: file size");
        assert_same(&oracle, oracle_fmt, &out);

        // The snapshot image's data mostly precedes the L2 table that maps it: streamed, it
        // needs more spool than memory holds, so its device gets a tail to park it in.
        let tail = if variant == "snapshot" { 64 * MIB } else { 0 };
        let dev = LoopDev::new(dir.path(), size + tail, 99);
        let res = import(s(source), &dev.path, &[]);
        assert_ok(&res);
        if tail == 0 {
            assert_same(&oracle, oracle_fmt, &dev.path);
        } else {
            assert_same_prefix(&oracle, oracle_fmt, &dev.path, size);
            let spool_start = size.next_multiple_of(2 * MIB);
            let mut parked = vec![1u8; MIB as usize];
            std::os::unix::fs::FileExt::read_exact_at(
                &std::fs::File::open(&dev.path).unwrap(),
                &mut parked,
                spool_start,
            )
            .unwrap();
            if delivery == "gz stream" {
                assert!(parked.iter().all(|&b| b == 0), "spooled bytes left in the device's tail");
            }
        }
    }
}

#[test]
fn v3_default_clusters() {
    check("v3");
}
#[test]
fn v2_compat() {
    check("v2");
}
#[test]
fn v2_compressed() {
    check("v2-compressed");
}
#[test]
fn clusters_of_512_bytes() {
    check("cluster-512");
}
#[test]
fn clusters_of_4_kib() {
    check("cluster-4k");
}
#[test]
fn clusters_of_2_mib() {
    check("cluster-2m");
}
#[test]
fn zlib_compressed_clusters() {
    check("zlib");
}
#[test]
fn zstd_compressed_clusters() {
    check("zstd");
}
#[test]
fn zstd_compressed_small_clusters() {
    check("zstd-4k");
}
#[test]
fn extended_l2_with_partial_and_zero_subclusters() {
    check("extended-l2");
}
#[test]
fn extended_l2_whose_last_cluster_is_partly_written() {
    check("extended-l2-sparse-tail");
}
#[test]
fn zero_flagged_clusters_over_old_data() {
    check("zero-clusters");
}
#[test]
fn internal_snapshots_convert_the_active_layer() {
    check("snapshot");
}
#[test]
fn preallocated_metadata() {
    check("prealloc-metadata");
}
#[test]
fn dirty_bit_is_read_only_safe() {
    check("dirty");
}
#[test]
fn corrupt_bit_is_read_with_bounds_checks() {
    check("corrupt-bit");
}
#[test]
fn virtual_size_not_a_cluster_multiple() {
    check("odd-size");
}

/// Raw, xz, zstd and stacked compression also land identical.
#[test]
fn raw_and_stacked_compression() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, SIZE, 3);
    let sh = |c: &str| run(std::process::Command::new("sh").arg("-c").arg(c));
    let r = s(&raw);
    ensure_tool("zstd", "zstd");
    sh(&format!(
        "gzip -1 -c {r} > {r}.gz && xz -0 -T2 --block-size=4MiB -c {r} > {r}.xz && zstd -q -1 -c {r} > {r}.zst"
    ));
    sh(&format!("qemu-img convert -O qcow2 -c {r} {r}.qcow2 && xz -0 -c {r}.qcow2 > {r}.qcow2.xz"));
    sh(&format!("gzip -1 -c {r}.xz > {r}.xz.gz"));
    // Two gzip members, as pigz or `cat a.gz b.gz` produce.
    sh(&format!("head -c 10000000 {r} | gzip -1 > {r}.multi.gz && tail -c +10000001 {r} | gzip -1 >> {r}.multi.gz"));
    for ext in ["", ".gz", ".xz", ".zst", ".qcow2.xz", ".xz.gz", ".multi.gz"] {
        let src = format!("{r}{ext}");
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        assert_ok(&import(&src, &out, &[]));
        assert_same(&raw, "raw", &out);
        let dev = LoopDev::new(dir.path(), SIZE, 5);
        assert_ok(&import(&src, &dev.path, &[]));
        assert_same(&raw, "raw", &dev.path);
    }
}

/// A file target allocates no more than `qemu-img convert -O raw` does.
#[test]
fn file_targets_are_as_sparse_as_qemu_img() {
    let dir = tempdir();
    for variant in ["v3", "zlib", "extended-l2"] {
        let (q, _) = build(dir.path(), variant);
        let ours = dir.path().join("ours.raw");
        let theirs = dir.path().join("theirs.raw");
        let _ = std::fs::remove_file(&ours);
        assert_ok(&import(s(&q), &ours, &[]));
        qemu_img(&["convert", "-O", "raw", s(&q), s(&theirs)]);
        // qemu-img leaves its output in delayed allocation; the extent tree blocks it will
        // need are only counted once flushed (cdi-mover fsyncs before reporting success).
        std::fs::File::open(&theirs).unwrap().sync_all().unwrap();
        assert!(
            allocated(&ours) <= allocated(&theirs),
            "{variant}: cdi-mover allocated {} bytes, qemu-img {}",
            allocated(&ours),
            allocated(&theirs)
        );
        std::fs::remove_file(&theirs).unwrap();
    }
}
