//! VHD and VDI against qemu-img as the oracle (every subformat, from a file and from a
//! compressed stream, into a file and into a loop device holding old data), and the formats
//! recognised only to be refused by name rather than imported as raw bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// Not a multiple of any block size: the last block of every image is partial.
const SIZE: u64 = 24 * MIB + 1536;

/// `qemu-img convert` of a fresh raw disk into `fmt` with `opts`; returns the image.
fn convert(dir: &Path, fmt: &str, opts: &str) -> PathBuf {
    let raw = dir.join("src.raw");
    if !raw.exists() {
        make_raw(&raw, SIZE, 17);
    }
    let img = dir.join(format!("d-{}.{fmt}", opts.replace(['=', ','], "_")));
    let mut args = vec!["convert", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend_from_slice(&["-o", opts]);
    }
    args.extend_from_slice(&[s(&raw), s(&img)]);
    qemu_img(&args);
    img
}

fn virtual_size(img: &Path, fmt: &str) -> u64 {
    let out = qemu_img(&["info", "--output=json", "-f", fmt, s(img)]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

/// Imports `img` from the file and from gzip and xz streams, into a file and into a loop
/// device of exactly the disk's size pre-filled with random bytes; each compared with the
/// image by qemu-img.
fn check(img: &Path, fmt: &str, name: &str) {
    let dir = img.parent().unwrap();
    let size = virtual_size(img, fmt);
    let gz = PathBuf::from(format!("{}.gz", s(img)));
    let xz = PathBuf::from(format!("{}.xz", s(img)));
    sh(&format!(
        "gzip -1 -c {i} > {gz} && xz -0 -T2 --block-size=4MiB -c {i} > {xz}",
        i = s(img),
        gz = s(&gz),
        xz = s(&xz)
    ));
    for source in [img, &gz, &xz] {
        let out = dir.join("out.raw");
        let _ = std::fs::remove_file(&out);
        let res = import(s(source), &out, &["--progress", "json"]);
        assert_ok(&res);
        let report = String::from_utf8_lossy(&res.stdout);
        assert!(report.contains(&format!("\"{name}\"")), "{}: format not reported as {name}: {report}", s(source));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "{}: file size", s(source));
        assert_same(img, fmt, &out);

        let dev = LoopDev::new(dir, size, 41);
        assert_ok(&import(s(source), &dev.path, &[]));
        assert_same(img, fmt, &dev.path);
    }
}

#[test]
fn vhd_dynamic() {
    let dir = tempdir();
    check(&convert(dir.path(), "vpc", ""), "vpc", "vhd");
}

#[test]
fn vhd_dynamic_sized_by_current_size() {
    let dir = tempdir();
    check(&convert(dir.path(), "vpc", "force_size=on"), "vpc", "vhd");
}

/// A fixed VHD is the disk followed by a 512-byte footer: the footer is not the disk's last
/// sector, and the disk fits a device of exactly its size.
#[test]
fn vhd_fixed_is_not_raw_with_a_footer() {
    let dir = tempdir();
    check(&convert(dir.path(), "vpc", "subformat=fixed"), "vpc", "vhd");
    check(&convert(dir.path(), "vpc", "subformat=fixed,force_size=on"), "vpc", "vhd");
}

#[test]
fn vdi_dynamic_and_static() {
    let dir = tempdir();
    check(&convert(dir.path(), "vdi", ""), "vdi", "vdi");
    check(&convert(dir.path(), "vdi", "static=on"), "vdi", "vdi");
}

/// Blocks written after creation land out of guest order in the file.
#[test]
fn vhd_and_vdi_written_out_of_order() {
    let dir = tempdir();
    for (fmt, name) in [("vpc", "vhd"), ("vdi", "vdi")] {
        let img = dir.path().join(format!("w.{fmt}"));
        qemu_img(&["create", "-f", fmt, s(&img), &SIZE.to_string()]);
        let mut c = Command::new("qemu-io");
        c.args(["-f", fmt]);
        for cmd in ["write -P 0x11 20m 1m", "write -P 0x22 0 4k", "write -P 0x33 9m 3m", "write -z 20m 64k"] {
            c.args(["-c", cmd]);
        }
        run(c.arg(&img));
        check(&img, fmt, name);
    }
}

/// Sets a VHD structure's checksum (one's complement of its byte sum) after an edit.
fn vhd_fix_checksum(f: &Path, at: u64, len: usize, field: usize) {
    let mut b = peek(f, at, len);
    b[field..field + 4].fill(0);
    let sum = !b.iter().fold(0u32, |a, &x| a.wrapping_add(x.into()));
    poke(f, at + field as u64, &sum.to_be_bytes());
}

#[test]
fn differencing_images_are_refused_with_their_parent() {
    let dir = tempdir();
    // qemu-img cannot make a differencing VHD: turn a dynamic one into one, naming a parent.
    let vhd = convert(dir.path(), "vpc", "");
    let len = std::fs::metadata(&vhd).unwrap().len();
    for footer in [0, len - 512] {
        poke(&vhd, footer + 60, &4u32.to_be_bytes());
        vhd_fix_checksum(&vhd, footer, 512, 64);
    }
    let parent: Vec<u8> = "C:\\vms\\base.vhd".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
    poke(&vhd, 512 + 64, &parent);
    vhd_fix_checksum(&vhd, 512, 1024, 36);
    refused(dir.path(), &vhd, &["vhd", "differencing", "base.vhd"]);

    let vdi = convert(dir.path(), "vdi", "");
    poke(&vdi, 0x4c, &4u32.to_le_bytes());
    refused(dir.path(), &vdi, &["vdi", "differencing", "UUID"]);
}

#[test]
fn hostile_tables_and_truncation_are_refused() {
    let dir = tempdir();
    let vhd = convert(dir.path(), "vpc", "");
    // The BAT follows the headers at 1536; point its first allocated entry far past the end.
    let bat = peek(&vhd, 1536, 64);
    let first = bat.chunks(4).position(|e| e != [0xff; 4]).expect("an allocated block") as u64;
    let bad = dir.path().join("bat.vhd");
    std::fs::copy(&vhd, &bad).unwrap();
    poke(&bad, 1536 + first * 4, &0x0800_0000u32.to_be_bytes());
    refused(dir.path(), &bad, &["vhd", "beyond the end"]);

    let cut = dir.path().join("cut.vhd");
    std::fs::copy(&vhd, &cut).unwrap();
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::File::options().write(true).open(&cut).unwrap().set_len(len / 2).unwrap();
    refused(dir.path(), &cut, &["vhd"]);
    let gz = dir.path().join("cut.vhd.gz");
    sh(&format!("gzip -1 -c {} > {}", s(&cut), s(&gz)));
    refused(dir.path(), &gz, &["vhd", "truncated"]);

    let vdi = convert(dir.path(), "vdi", "");
    let absurd = dir.path().join("absurd.vdi");
    std::fs::copy(&vdi, &absurd).unwrap();
    poke(&absurd, 0x170, &(1u64 << 60).to_le_bytes()); // disk size far past its blocks
    refused(dir.path(), &absurd, &["vdi", "blocks in image"]);
}

/// Formats qemu-img reads but CDI refuses: named in the refusal, never imported as a raw
/// disk holding the container's bytes.
#[test]
fn formats_cdi_refuses_are_named() {
    let dir = tempdir();
    let d = dir.path();
    for (fmt, name) in [("qed", "qed"), ("parallels", "parallels")] {
        refused(d, &convert(d, fmt, ""), &["unsupported format", name]);
    }
    let luks = d.join("d.luks");
    qemu_img(&["create", "--object", "secret,id=s0,data=pw", "-f", "luks", "-o", "key-secret=s0", s(&luks), "8M"]);
    refused(d, &luks, &["unsupported format", "luks"]);

    // A VMDK descriptor names its data files: one file cannot carry them.
    let flat = d.join("d.vmdk");
    qemu_img(&["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", s(&flat), "8M"]);
    refused(d, &flat, &["vmdk", "several files"]);

    // Headers qemu-img cannot write: a few bytes of each, then raw-looking data.
    let mut head = vec![0u8; 8 << 20];
    Rng::new(3).fill(&mut head);
    for (name, magic) in [
        ("bochs", &b"Bochs Virtual HD Image"[..]),
        ("cloop", &b"#!/bin/sh\n#V2.0 Format\n"[..]),
        ("COWD", &b"COWD"[..]),
    ] {
        let f = d.join(format!("{name}.img"));
        let mut bytes = head.clone();
        bytes[..magic.len()].copy_from_slice(magic);
        std::fs::write(&f, &bytes).unwrap();
        refused(d, &f, &["unsupported format", name]);
    }
    // An Apple disk image says what it is in its last 512 bytes.
    let dmg = d.join("d.dmg");
    let mut bytes = head.clone();
    let end = bytes.len() - 512;
    bytes[end..end + 4].copy_from_slice(b"koly");
    bytes[end + 4..end + 8].copy_from_slice(&4u32.to_be_bytes());
    bytes[end + 8..end + 12].copy_from_slice(&512u32.to_be_bytes());
    std::fs::write(&dmg, &bytes).unwrap();
    refused(d, &dmg, &["unsupported format", "dmg"]);
    let gz = d.join("d.dmg.gz");
    sh(&format!("gzip -1 -c {} > {}", s(&dmg), s(&gz)));
    refused(d, &gz, &["unsupported format", "dmg"]);
}

/// A raw stream whose last bytes happen to hold data is imported whole: only a real fixed
/// VHD footer (cookie and checksum) is taken off.
#[test]
fn raw_streams_keep_their_last_sector() {
    let dir = tempdir();
    let raw = dir.path().join("tail.raw");
    let mut bytes = vec![0u8; 3 << 20];
    Rng::new(8).fill(&mut bytes[(2 << 20)..]);
    bytes[(3 << 20) - 512..(3 << 20) - 504].copy_from_slice(b"conectix"); // a cookie, no checksum
    std::fs::write(&raw, &bytes).unwrap();
    let gz = dir.path().join("tail.raw.gz");
    sh(&format!("gzip -1 -c {} > {}", s(&raw), s(&gz)));
    for source in [&raw, &gz] {
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        assert_ok(&import(s(source), &out, &[]));
        assert_eq!(std::fs::read(&out).unwrap(), bytes, "{}", s(source));
    }
}

/// A compressed raw disk that ends in a hole keeps its full size.
#[test]
fn compressed_raw_ending_in_zeros_keeps_its_size() {
    let dir = tempdir();
    let raw = dir.path().join("hole.raw");
    let mut bytes = vec![0u8; 5 << 20];
    Rng::new(9).fill(&mut bytes[..MIB as usize]);
    std::fs::write(&raw, &bytes).unwrap();
    for ext in ["gz", "zst"] {
        let packed = dir.path().join(format!("hole.raw.{ext}"));
        ensure_tool("zstd", "zstd");
        let tool = if ext == "gz" { "gzip -1" } else { "zstd -q -1" };
        sh(&format!("{tool} -c {} > {}", s(&raw), s(&packed)));
        let out = dir.path().join("out.raw");
        let _ = std::fs::remove_file(&out);
        assert_ok(&import(s(&packed), &out, &[]));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 5 << 20, "{ext}: size");
        assert_same(&raw, "raw", &out);
    }
}
