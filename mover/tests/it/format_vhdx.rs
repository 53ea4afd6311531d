//! VHDX against qemu-img, the oracle: images made by `qemu-img convert -O vhdx` (dynamic and
//! fixed, block sizes from 1 MiB to 256 MiB, odd sizes, written to by qemu-io afterwards),
//! each imported from the file (random access) and from a gzip stream (one pass), into a
//! file and into a loop device that held random data, then `qemu-img compare`d with the
//! image. Damaged and hostile images are refused with a clear error and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Virtual size of the images: several blocks at 1 MiB and 8 MiB, less than one at 32 MiB.
const SIZE: u64 = 24 * MIB;

// On-disk GUIDs (Microsoft's layout: first three fields little-endian).
const BAT_REGION: [u8; 16] = *b"\x66\x77\xc2\x2d\x23\xf6\x00\x42\x9d\x64\x11\x5e\x9b\xfd\x4a\x08";
const METADATA_REGION: [u8; 16] = *b"\x06\xa2\x7c\x8b\x90\x47\x9a\x4b\xb8\xfe\x57\x5f\x05\x0f\x88\x6e";
const FILE_PARAMETERS: [u8; 16] = *b"\x37\x67\xa1\xca\x36\xfa\x43\x4d\xb3\xb6\x33\xf0\xaa\x44\xe7\x6b";
const VIRTUAL_DISK_SIZE: [u8; 16] = *b"\x24\x42\xa5\x2f\x1b\xcd\x76\x48\xb2\x11\x5d\xbe\xd8\x3b\xf4\xb8";
const PARENT_LOCATOR: [u8; 16] = *b"\x2d\x5f\xd3\xa8\x0b\xb3\x4d\x45\xab\xf7\xd3\xd8\x48\x34\xab\x0c";
const VHDX_PARENT_TYPE: [u8; 16] = *b"\xb7\xef\x4a\xb0\x9e\xd1\x81\x4a\xb7\x89\x25\xb8\xe9\x44\x59\x13";

fn le64(f: &Path, at: u64) -> u64 {
    u64::from_le_bytes(peek(f, at, 8).try_into().unwrap())
}

fn le32(f: &Path, at: u64) -> u32 {
    u32::from_le_bytes(peek(f, at, 4).try_into().unwrap())
}

/// Host offset of the region `id`, from the region table at 192 KiB.
fn region(f: &Path, id: [u8; 16]) -> u64 {
    let count = le32(f, (192 << 10) + 8) as u64;
    (0..count)
        .map(|i| (192 << 10) + 16 + 32 * i)
        .find(|&e| peek(f, e, 16) == id)
        .map(|e| le64(f, e + 16))
        .expect("region in the table")
}

/// Host offset of metadata item `id`.
fn metadata_item(f: &Path, id: [u8; 16]) -> u64 {
    let meta = region(f, METADATA_REGION);
    let count = u64::from(u16::from_le_bytes(peek(f, meta + 10, 2).try_into().unwrap()));
    (0..count)
        .map(|i| meta + 32 + 32 * i)
        .find(|&e| peek(f, e, 16) == id)
        .map(|e| meta + u64::from(le32(f, e + 16)))
        .expect("metadata item in the table")
}

/// Rewrites both headers through `edit`, checksums recomputed as a writer would.
fn edit_headers(f: &Path, edit: impl Fn(&mut [u8])) {
    let crc32c = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    for at in [64 << 10, 128 << 10] {
        let mut h = peek(f, at, 4096);
        edit(&mut h);
        h[4..8].fill(0);
        let sum = crc32c.checksum(&h);
        h[4..8].copy_from_slice(&sum.to_le_bytes());
        poke(f, at, &h);
    }
}

/// `qemu-img convert -O vhdx` of a fresh raw disk of `size`, with `-o opts`.
fn convert(dir: &Path, name: &str, size: u64, opts: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    make_raw(&raw, size, 11);
    let img = dir.join(format!("{name}.vhdx"));
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", opts, s(&raw), s(&img)]);
    std::fs::remove_file(&raw).unwrap();
    img
}

/// Builds the variant's image; returns it and its virtual size.
fn build(dir: &Path, variant: &str) -> (PathBuf, u64) {
    let odd = SIZE + 1536;
    match variant {
        "dynamic" => (convert(dir, variant, SIZE, "subformat=dynamic"), SIZE),
        "dynamic-1m" => (convert(dir, variant, SIZE, "subformat=dynamic,block_size=1M"), SIZE),
        "dynamic-8m" => (convert(dir, variant, SIZE, "subformat=dynamic,block_size=8M"), SIZE),
        "dynamic-32m" => (convert(dir, variant, SIZE, "subformat=dynamic,block_size=32M"), SIZE),
        "dynamic-256m" => (convert(dir, variant, SIZE, "subformat=dynamic,block_size=256M"), SIZE),
        "fixed" => (convert(dir, variant, SIZE, "subformat=fixed"), SIZE),
        "fixed-1m" => (convert(dir, variant, SIZE, "subformat=fixed,block_size=1M"), SIZE),
        "fixed-256m" => (convert(dir, variant, SIZE, "subformat=fixed,block_size=256M"), SIZE),
        "odd-size" => (convert(dir, variant, odd, "subformat=dynamic,block_size=1M"), odd),
        "odd-size-fixed" => (convert(dir, variant, odd, "subformat=fixed,block_size=8M"), odd),
        "qemu-io" => {
            let img = convert(dir, variant, SIZE, "subformat=dynamic,block_size=1M");
            // New blocks (whole and partial), an overwrite, zeroes over data, the last
            // sector: each updates the BAT through the log, which qemu applies and leaves.
            qemu_io_fmt(
                "vhdx",
                s(&img),
                &[
                    "write -P 0xab 1m 4k",
                    "write -P 0xcd 5m 1m",
                    "write -P 0x11 0 64k",
                    "write -z 9m 1m",
                    "write -P 0xef 25165312 512",
                ],
            );
            (img, SIZE)
        }
        "log-guid" => {
            // A log GUID with no entry of its own in the log: nothing to replay (qemu agrees,
            // or its compare below would fail).
            let img = convert(dir, variant, SIZE, "subformat=dynamic");
            edit_headers(&img, |h| h[48..64].copy_from_slice(&[0x5a; 16]));
            (img, SIZE)
        }
        other => panic!("unknown variant {other}"),
    }
}

/// Imports `variant` four ways and compares each result with the image.
fn check(variant: &str) {
    let dir = tempdir();
    let (img, size) = build(dir.path(), variant);
    let gz = gzip(&img);
    for (delivery, source) in [("file", &img), ("gz stream", &gz)] {
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        assert_ok(&import(s(source), &out, &[]));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "{variant} via {delivery}: file size");
        assert_same(&img, "vhdx", &out);

        let dev = LoopDev::new(dir.path(), size, 17);
        assert_ok(&import(s(source), &dev.path, &[]));
        assert_same(&img, "vhdx", &dev.path);
    }
}

#[test]
fn dynamic_default_blocks() {
    check("dynamic");
}
#[test]
fn dynamic_blocks_of_1_mib() {
    check("dynamic-1m");
}
#[test]
fn dynamic_blocks_of_8_mib() {
    check("dynamic-8m");
}
#[test]
fn dynamic_blocks_of_32_mib_larger_than_the_disk() {
    check("dynamic-32m");
}
#[test]
fn dynamic_blocks_of_256_mib() {
    check("dynamic-256m");
}
#[test]
fn fixed_default_blocks() {
    check("fixed");
}
#[test]
fn fixed_blocks_of_1_mib() {
    check("fixed-1m");
}
#[test]
fn fixed_blocks_of_256_mib() {
    check("fixed-256m");
}
#[test]
fn virtual_size_not_a_block_multiple() {
    check("odd-size");
}
#[test]
fn fixed_virtual_size_not_a_block_multiple() {
    check("odd-size-fixed");
}
#[test]
fn written_by_qemu_io_after_creation() {
    check("qemu-io");
}
#[test]
fn a_log_guid_without_entries_has_nothing_to_replay() {
    check("log-guid");
}

/// Asserts qemu refuses to open the image too, with `needle` in its message.
fn qemu_refuses(img: &Path, needle: &str) {
    let out = Command::new("qemu-img").args(["info", "-f", "vhdx", s(img)]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(needle), "qemu-img info {}: {stderr}", img.display());
}

fn copy(dir: &Path, img: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(img, &to).unwrap();
    to
}

#[test]
fn a_log_left_unreplayed_is_refused_as_qemu_refuses_it() {
    let dir = tempdir();
    let (img, _) = build(dir.path(), "qemu-io");
    let dirty = copy(dir.path(), &img, "dirty.vhdx");
    // qemu applies each log entry at once, then zeroes the header's log GUID; the last entry
    // stays in the log. Naming its GUID in the headers again is what a writer that died
    // before applying it leaves behind.
    let log = le64(&dirty, (64 << 10) + 72);
    assert_eq!(peek(&dirty, log, 4), b"loge", "qemu-io left no log entry at the log's start");
    let guid = peek(&dirty, log + 32, 16);
    edit_headers(&dirty, |h| h[48..64].copy_from_slice(&guid));
    qemu_refuses(&dirty, "contains a log that needs to be replayed");

    for src in [dirty.clone(), gzip(&dirty)] {
        let line = refused(dir.path(), &src, &["vhdx", "log that was never replayed"]);
        assert!(line.contains("qemu-img check -r all"), "{line}");
    }
    // The advice works: replayed, it imports.
    qemu_img(&["check", "-r", "all", "-f", "vhdx", s(&dirty)]);
    let out = dir.path().join("out.raw");
    assert_ok(&import(s(&dirty), &out, &[]));
    assert_same(&dirty, "vhdx", &out);
}

#[test]
fn a_differencing_vhdx_is_refused_naming_its_parent() {
    let dir = tempdir();
    let (base, _) = build(dir.path(), "dynamic");
    let child = dir.path().join("child.vhdx");
    let made = Command::new("qemu-img")
        .args(["create", "-f", "vhdx", "-b", s(&base), "-F", "vhdx", s(&child)])
        .output()
        .unwrap();
    if !made.status.success() {
        // qemu cannot write differencing vhdx images; make one as Hyper-V does: the
        // has-parent flag, and a parent locator naming the base.
        std::fs::copy(&base, &child).unwrap();
        let params = metadata_item(&child, FILE_PARAMETERS);
        poke(&child, params + 4, &2u32.to_le_bytes());
        let meta = region(&child, METADATA_REGION);
        let count = u16::from_le_bytes(peek(&child, meta + 10, 2).try_into().unwrap());
        let locator = parent_locator(&[("parent_linkage", "{0f1e2d3c}"), ("relative_path", ".\\base.vhdx")]);
        let item_at = 80u32 << 10; // free space after qemu-img's items
        let mut entry = PARENT_LOCATOR.to_vec();
        entry.extend_from_slice(&item_at.to_le_bytes());
        entry.extend_from_slice(&(locator.len() as u32).to_le_bytes());
        entry.extend_from_slice(&4u32.to_le_bytes()); // required
        entry.extend_from_slice(&[0; 4]);
        poke(&child, meta + 32 + 32 * u64::from(count), &entry);
        poke(&child, meta + 10, &(count + 1).to_le_bytes());
        poke(&child, meta + u64::from(item_at), &locator);
    }
    for src in [child.clone(), gzip(&child)] {
        refused(dir.path(), &src, &["vhdx", "differencing", "base.vhdx"]);
    }
}

/// A VHDX parent locator item holding `pairs` (UTF-16LE keys and values).
fn parent_locator(pairs: &[(&str, &str)]) -> Vec<u8> {
    let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
    let mut item = VHDX_PARENT_TYPE.to_vec();
    item.extend_from_slice(&[0, 0]);
    item.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let base = 20 + 12 * pairs.len();
    for (k, v) in pairs {
        let (k, v) = (utf16(k), utf16(v));
        item.extend_from_slice(&((base + strings.len()) as u32).to_le_bytes());
        item.extend_from_slice(&((base + strings.len() + k.len()) as u32).to_le_bytes());
        item.extend_from_slice(&(k.len() as u16).to_le_bytes());
        item.extend_from_slice(&(v.len() as u16).to_le_bytes());
        strings.extend_from_slice(&k);
        strings.extend_from_slice(&v);
    }
    item.extend_from_slice(&strings);
    item
}

#[test]
fn a_bat_entry_past_the_end_of_the_file_is_refused() {
    let dir = tempdir();
    let (img, _) = build(dir.path(), "dynamic-1m");
    let bad = copy(dir.path(), &img, "far.vhdx");
    // Block 2: FULLY_PRESENT at 1 TiB (the offset is in MiB above bit 20).
    poke(&bad, region(&bad, BAT_REGION) + 16, &((1u64 << 20) << 20 | 6).to_le_bytes());
    qemu_refuses(&bad, "points after end of file");
    refused(dir.path(), &bad, &["vhdx", "host offset 1099511627776", "beyond the end of the image"]);
    // A stream does not know its length: it ends before the block.
    refused(dir.path(), &gzip(&bad), &["vhdx", "1099511627776", "truncated"]);
}

#[test]
fn absurd_sizes_are_refused_with_their_field() {
    let dir = tempdir();
    let (img, _) = build(dir.path(), "dynamic");
    let refuse = |name: &str, item: [u8; 16], value: &[u8], needles: &[&str]| {
        let bad = copy(dir.path(), &img, name);
        poke(&bad, metadata_item(&bad, item), value);
        for src in [bad.clone(), gzip(&bad)] {
            refused(dir.path(), &src, needles);
        }
    };
    refuse(
        "petabyte.vhdx",
        VIRTUAL_DISK_SIZE,
        &(1u64 << 50).to_le_bytes(),
        &["virtual disk size is 1125899906842624", "64 TiB"],
    );
    // 60 TiB is allowed, but not with a 1 MiB BAT region behind it.
    refuse(
        "60tib.vhdx",
        VIRTUAL_DISK_SIZE,
        &(60u64 << 40).to_le_bytes(),
        &["its BAT region (host offset 2097152) holds 1048576 bytes", "needs 63037432 bytes"],
    );
    refuse("block-3m.vhdx", FILE_PARAMETERS, &(3u32 << 20).to_le_bytes(), &["block size is 3145728"]);
    refuse("block-4g.vhdx", FILE_PARAMETERS, &u32::MAX.to_le_bytes(), &["block size is 4294967295"]);
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempdir();
    let (img, _) = build(dir.path(), "dynamic-1m");
    let len = std::fs::metadata(&img).unwrap().len();
    // In the data; and before the BAT and metadata (qemu-img puts them at 2 and 3 MiB).
    for (cut, streamed) in [(len * 6 / 10, "data block"), (MIB + MIB / 2, "BAT at host offset 2097152")] {
        let short = copy(dir.path(), &img, "short.vhdx");
        std::fs::File::options().write(true).open(&short).unwrap().set_len(cut).unwrap();
        refused(dir.path(), &short, &["vhdx", "beyond the end of the image", "truncated"]);
        refused(dir.path(), &gzip(&short), &["vhdx", streamed, "truncated"]);
    }
}
