//! The reader and the writer on real files, without gRPC: a reader's chunks fed straight to
//! a writer, and hand-made streams that are cut off or malformed.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::write::TarInto;
use super::*;
use crate::disk::TargetOptions;

const BLOCK: u64 = ZERO_BLOCK as u64;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("volume-").tempdir().unwrap()
}

/// A sparse file: data, a block of zeros written as data, a hole, data at the very end.
fn mk_sparse(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[0xab; 3 * BLOCK as usize], 0).unwrap();
    f.write_all_at(&[0; BLOCK as usize], 3 * BLOCK).unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
}

fn read_all(path: &Path, format: Option<Format>) -> (Vec<Chunk>, ReadStats) {
    let mut chunks = Vec::new();
    let stats = VolumeReader::open(path, format)
        .unwrap()
        .run(|c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
    (chunks, stats)
}

fn feed(chunks: Vec<Chunk>) -> impl FnMut() -> Option<Chunk> {
    let mut items = chunks.into_iter();
    move || items.next()
}

/// The chunks without their end.
fn cut(mut chunks: Vec<Chunk>) -> Vec<Chunk> {
    assert!(matches!(chunks.pop(), Some(Chunk::End { .. })));
    chunks
}

fn write(path: &Path, chunks: Vec<Chunk>) -> Result<Written, VolumeError> {
    write_volume(path, TargetOptions::default(), TarInto::Directory, feed(chunks))
}

#[test]
fn a_sparse_file_streams_its_data_only_and_lands_sparse() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    let size = 64 * BLOCK + 100;
    mk_sparse(&src, size);
    let (chunks, stats) = read_all(&src, None);
    assert_eq!(chunks[0], Chunk::Header(Header { format: Format::Raw, size }));
    // The 3 data blocks and the tail's partial block; the zero block and the hole are zero.
    assert_eq!(stats.data_bytes, 3 * BLOCK + 100, "{chunks:?}");
    assert_eq!(stats.data_bytes + stats.zero_bytes, size);
    let dst = dir.path().join("dst.raw");
    let written = write(&dst, chunks).unwrap();
    assert_eq!(written.path, dst);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 <= 8 * BLOCK, "the copy is not sparse");
}

#[test]
fn a_raw_stream_without_its_end_leaves_no_file() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    mk_sparse(&src, 16 * BLOCK);
    let (chunks, _) = read_all(&src, None);
    let dst = dir.path().join("dst.raw");
    // Every extent, but no end.
    let err = write(&dst, cut(chunks.clone())).unwrap_err();
    assert!(matches!(err, VolumeError::Stream(StreamError::NoEnd { end }) if end == 16 * BLOCK), "{err}");
    // An end, but short of the header's size.
    let mut short = cut(chunks);
    let Some(Chunk::Extent(last)) = short.pop() else { panic!("no last extent") };
    short.push(Chunk::End { length: last.offset() });
    let err = write(&dst, short).unwrap_err();
    assert!(matches!(err, VolumeError::Stream(StreamError::Short { .. })), "{err}");
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, [src], "the target or its .partial was left behind");
}

#[test]
fn a_raw_stream_into_a_directory_becomes_disk_img() {
    let dir = tempdir();
    let src = dir.path().join("src.raw");
    mk_sparse(&src, 16 * BLOCK);
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let (chunks, _) = read_all(&src, None);
    let written = write(&vol, chunks).unwrap();
    assert_eq!(written.path, vol.join("disk.img"));
    let img = std::fs::File::open(vol.join("disk.img")).unwrap();
    assert!(img.metadata().unwrap().len() >= 16 * BLOCK, "disk.img is grown to the volume's usable space");
    let mut head = vec![0; 16 * BLOCK as usize];
    img.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, std::fs::read(&src).unwrap());
    // Reading the volume back gives its disk.img, unasked.
    assert_eq!(VolumeReader::open(&vol, None).unwrap().header().format, Format::Raw);
}

#[test]
fn a_symlink_named_disk_img_is_never_followed() {
    let dir = tempdir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"host file").unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::os::unix::fs::symlink(&secret, vol.join("disk.img")).unwrap();
    let err = VolumeReader::open(&vol, Some(Format::Raw)).unwrap_err();
    assert!(matches!(err, VolumeError::WrongFormat { .. }), "{err}");
    // Unasked, the volume streams as a tree, in which the link is a link.
    let (chunks, _) = read_all(&vol, None);
    assert_eq!(chunks[0], Chunk::Header(Header { format: Format::Tar, size: 0 }));
    let bytes: Vec<u8> = chunks
        .iter()
        .flat_map(|c| match c {
            Chunk::Extent(Extent::Data { data, .. }) => data.to_vec(),
            Chunk::Extent(Extent::Zero { len, .. }) => vec![0; *len as usize],
            Chunk::Header(_) | Chunk::End { .. } => vec![],
        })
        .collect();
    assert!(!bytes.windows(9).any(|w| w == b"host file"), "the link's target was archived");
}

/// Apparent size of the tree's sparse file.
const SPARSE_SIZE: u64 = 64 << 20;

/// A tree with what a filesystem volume holds: nested dirs, a sparse file, an empty file,
/// a symlink, a FIFO (skipped).
fn mk_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    mk_sparse(&root.join("a/sparse.img"), SPARSE_SIZE);
    std::os::unix::fs::symlink("b/c/deep.txt", root.join("a/link")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn a_tree_round_trips_as_tar_with_its_holes_left_out() {
    let dir = tempdir();
    let src = dir.path().join("src");
    mk_tree(&src);
    let (chunks, stats) = read_all(&src, None);
    assert_eq!(chunks[0], Chunk::Header(Header { format: Format::Tar, size: 0 }));
    // A 64 MiB sparse file with 16 KiB of data: the archive has its data only.
    assert!(stats.data_bytes < 64 * BLOCK, "{stats:?}");
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let written = write(&dst, chunks).unwrap();
    assert_eq!(written.data_bytes, stats.data_bytes);
    assert_eq!(std::fs::read(dst.join("a/b/c/deep.txt")).unwrap(), b"deep");
    assert_eq!(std::fs::read(dst.join("empty")).unwrap(), b"");
    assert_eq!(std::fs::read_link(dst.join("a/link")).unwrap(), Path::new("b/c/deep.txt"));
    assert!(!dst.join("fifo").exists(), "a FIFO was streamed");
    let (a, b) = (src.join("a/sparse.img"), dst.join("a/sparse.img"));
    assert_eq!(std::fs::metadata(&b).unwrap().len(), SPARSE_SIZE);
    assert!(std::fs::metadata(&b).unwrap().blocks() * 512 <= 64 * BLOCK, "the sparse file was filled");
    let (fa, fb) = (std::fs::File::open(&a).unwrap(), std::fs::File::open(&b).unwrap());
    for off in [0, 3 * BLOCK, SPARSE_SIZE - BLOCK] {
        let (mut x, mut y) = (vec![0; BLOCK as usize], vec![0; BLOCK as usize]);
        fa.read_exact_at(&mut x, off).unwrap();
        fb.read_exact_at(&mut y, off).unwrap();
        assert_eq!(x, y, "at {off}");
    }
}

#[test]
fn an_interrupted_tar_stream_leaves_the_directory_as_it_was() {
    let dir = tempdir();
    let src = dir.path().join("src");
    mk_tree(&src);
    let (chunks, _) = read_all(&src, None);
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("old"), b"old").unwrap();
    // Every extent arrived, but not the stream's end.
    let err = write(&dst, cut(chunks)).unwrap_err();
    assert!(matches!(err, VolumeError::Stream(StreamError::NoEnd { .. })), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["old"]);
}

#[test]
fn what_follows_the_archive_is_drained_without_expanding_zeros() {
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let (chunks, stats) = read_all(&src, None);
    let mut chunks = cut(chunks);
    // A zero extent of 2^62 bytes after the archive: expanding it would never end.
    chunks.push(Chunk::Extent(Extent::Zero { offset: stats.length, len: 1 << 62 }));
    chunks.push(Chunk::End { length: stats.length + (1 << 62) });
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let written = write(&dst, chunks).unwrap();
    assert!(written.zero_bytes >= 1 << 62);
    assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"x");
}

#[test]
fn a_tar_stream_is_only_extracted_into_a_directory() {
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let (chunks, _) = read_all(&src, None);
    let err = write(&dir.path().join("out.tar"), chunks.clone()).unwrap_err();
    assert!(matches!(err, VolumeError::WrongFormat { format: Format::Tar, .. }), "{err}");
    // The CLI keeps it as a tar file when asked to.
    let out = dir.path().join("out.tar");
    write_volume(&out, TargetOptions::default(), TarInto::DirectoryOrFile, feed(chunks)).unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    assert_eq!(archive.entries().unwrap().count(), 0);
}

#[test]
fn a_hostile_archive_is_refused_and_nothing_is_extracted() {
    let dir = tempdir();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, "escape", "../../etc").unwrap();
    let bytes = tar.into_inner().unwrap();
    let chunks = vec![
        Chunk::Header(Header { format: Format::Tar, size: 0 }),
        Chunk::Extent(Extent::Data { offset: 0, data: bytes.clone().into() }),
        Chunk::End { length: bytes.len() as u64 },
    ];
    let dst = dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let err = write(&dst, chunks).unwrap_err();
    assert!(err.to_string().contains("points outside the target directory"), "{err}");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
}
