//! `--content-type archive`: tar (optionally compressed) extracted into a directory, with
//! every escape refused and a refused archive leaving the directory untouched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// Builds a tar with `tar::Builder`, letting a test write any member, hostile ones included.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(4242);
        h.set_gid(4242);
        // Written raw: `set_path` would refuse the hostile names these tests need.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        h
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Tar {
        let h = Tar::header(tar::EntryType::Regular, path, data.len() as u64, mode);
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(mut self, path: &str) -> Tar {
        let h = Tar::header(tar::EntryType::Directory, path, 0, 0o755);
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Tar {
        let mut h = Tar::header(kind, path, 0, 0o777);
        let name = &mut h.as_old_mut().linkname;
        name.fill(0);
        name[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn special(mut self, kind: tar::EntryType, path: &str) -> Tar {
        let h = Tar::header(kind, path, 0, 0o644);
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    fn write(self, to: &Path) {
        std::fs::write(to, self.0.into_inner().unwrap()).unwrap();
    }
}

fn extract(src: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--content-type", "archive"];
    args.extend_from_slice(extra);
    import(s(src), dir, &args)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn archives_extract_with_modes_links_and_compression() {
    let dir = tempdir();
    let big: Vec<u8> = {
        let mut v = vec![0u8; 3 * MIB as usize];
        Rng::new(4).fill(&mut v[..MIB as usize]);
        v
    };
    let tar = dir.path().join("a.tar");
    Tar::new()
        .dir("etc/")
        .file("etc/config", b"answer = 42\n", 0o640)
        .file("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755)
        .file("data/big.bin", &big, 0o644)
        .link(tar::EntryType::Symlink, "etc/link", "config")
        .link(tar::EntryType::Symlink, "up", "data/../etc")
        .link(tar::EntryType::Link, "data/hard", "etc/config")
        .write(&tar);
    ensure_tool("zstd", "zstd");
    let t = s(&tar);
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {t} > {t}.gz && xz -c {t} > {t}.xz && zstd -q -c {t} > {t}.zst")));

    for ext in ["", ".gz", ".xz", ".zst"] {
        let target = dir.path().join(format!("vol{}", ext.replace('.', "-")));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep.txt"), b"pre-existing").unwrap();
        assert_ok(&extract(Path::new(&format!("{t}{ext}")), &target, &[]));
        assert_eq!(
            listing(&target),
            ["bin", "bin/tool", "data", "data/big.bin", "data/hard", "etc", "etc/config", "etc/link", "keep.txt", "up"]
        );
        assert_eq!(std::fs::read(target.join("data/big.bin")).unwrap(), big);
        assert!(allocated(&target.join("data/big.bin")) < 2 * MIB, "zero blocks become holes");
        assert_eq!(std::fs::read_link(target.join("etc/link")).unwrap(), Path::new("config"));
        assert_eq!(std::fs::read(target.join("up/config")).unwrap(), b"answer = 42\n");
        let cfg = std::fs::metadata(target.join("etc/config")).unwrap();
        assert_eq!(cfg.ino(), std::fs::metadata(target.join("data/hard")).unwrap().ino(), "hard link");
        assert_eq!(cfg.permissions().mode() & 0o7777, 0o640);
        assert_ne!(cfg.uid(), 4242, "ownership is not kept");
        let tool = std::fs::metadata(target.join("bin/tool")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(tool, 0o755, "setuid is dropped");
        assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"pre-existing");
    }
}

#[test]
fn escapes_and_special_files_refuse_the_whole_archive() {
    let dir = tempdir();
    type Build = fn(Tar) -> Tar;
    let cases: Vec<(&str, Build, &str)> = vec![
        ("dotdot", |t| t.file("../evil", b"x", 0o644), "outside the target"),
        ("nested-dotdot", |t| t.file("a/../../evil", b"x", 0o644), "outside the target"),
        ("absolute", |t| t.file("/tmp/cdi-rs-evil", b"x", 0o644), "outside the target"),
        ("symlink-out", |t| t.link(tar::EntryType::Symlink, "l", "../../etc"), "points outside"),
        ("symlink-abs", |t| t.link(tar::EntryType::Symlink, "l", "/etc/passwd"), "points outside"),
        (
            "symlink-chain",
            |t| t.link(tar::EntryType::Symlink, "y", ".").link(tar::EntryType::Symlink, "x", "y/y/y/../.."),
            "points outside",
        ),
        (
            "through-symlink",
            |t| t.dir("sub/").link(tar::EntryType::Symlink, "d", "sub").file("d/f", b"x", 0o644),
            "through the symlink",
        ),
        ("hardlink-out", |t| t.link(tar::EntryType::Link, "h", "../../etc/passwd"), "hard link"),
        ("hardlink-missing", |t| t.link(tar::EntryType::Link, "h", "nothing-here"), "hard link"),
        ("char-device", |t| t.special(tar::EntryType::Char, "null"), "character device"),
        ("block-device", |t| t.special(tar::EntryType::Block, "sda"), "block device"),
        ("fifo", |t| t.special(tar::EntryType::Fifo, "pipe"), "fifo"),
    ];
    for (name, build, needle) in cases {
        let tar = dir.path().join(format!("{name}.tar"));
        build(Tar::new().file("first.txt", b"extracted before the bad member", 0o644)).write(&tar);
        let target = dir.path().join(format!("vol-{name}"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep.txt"), b"pre-existing").unwrap();
        let res = extract(&tar, &target, &[]);
        assert_refused(&res, &[needle, "refused"]);
        assert_eq!(listing(&target), ["keep.txt"], "{name}: the target changed");
        assert!(!Path::new("/tmp/cdi-rs-evil").exists() && !dir.path().join("evil").exists(), "{name}: escaped");
    }
}

#[test]
fn archive_mode_needs_a_directory_and_a_tar() {
    let dir = tempdir();
    let raw = dir.path().join("d.raw");
    make_raw(&raw, MIB, 2);
    let tar = dir.path().join("a.tar");
    Tar::new().file("f", b"x", 0o644).write(&tar);
    assert_refused(&extract(&tar, &dir.path().join("file.out"), &[]), &["needs a directory target"]);
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    assert_refused(&extract(&raw, &vol, &[]), &["expects a tar archive", "raw"]);
    // A bad checksum is only known at the end: nothing may have been moved in.
    let bad = format!("md5:{}", "0".repeat(32));
    assert_refused(&extract(&tar, &vol, &["--checksum", &bad]), &["checksum mismatch"]);
    assert_eq!(listing(&vol), Vec::<String>::new());
}
