//! `contentType: archive`: a tar archive extracted into a filesystem volume.
//!
//! # Guarantees
//! * Nothing lands outside the target directory: member paths with `..` or a root are
//!   refused, members are never written through a symlink, hard links must name a regular
//!   file extracted earlier, and after extraction every symlink is resolved (through the
//!   other symlinks of the archive) and refused if it leads out.
//! * No device nodes or FIFOs; ownership is not kept (files belong to the mover) and
//!   setuid, setgid and sticky bits are dropped.
//! * All or nothing: members are extracted into a staging directory inside the target and
//!   moved into place only when the whole archive was accepted; a refused archive leaves
//!   the target as it was.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::copy::is_zero;

/// Name of the staging directory inside the target.
pub(crate) const STAGING: &str = ".cdi-archive.partial";
/// Symlinks followed when resolving one link (Linux's own limit is 40).
const MAX_LINK_DEPTH: usize = 40;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive member {path:?} would be written outside the target directory; the archive was refused")]
    EscapingPath { path: String },
    #[error("archive member {path:?} would be written through the symlink {link:?}; the archive was refused")]
    ThroughSymlink { path: String, link: String },
    #[error("archive symlink {path:?} points outside the target directory (to {target:?}); the archive was refused")]
    EscapingSymlink { path: String, target: String },
    #[error(
        "archive hard link {path:?} must name a regular file extracted before it, not {target:?}; the archive was refused"
    )]
    BadHardLink { path: String, target: String },
    #[error("archive member {path:?} is a {kind}; device nodes and FIFOs are not extracted; the archive was refused")]
    SpecialFile { path: String, kind: &'static str },
    #[error("archive member {path:?} has an unsupported type ({kind}); the archive was refused")]
    UnsupportedMember { path: String, kind: String },
    #[error("the tar archive is malformed: {0}")]
    Malformed(String),
    #[error("cannot {op} {path} while extracting: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("extraction cancelled")]
    Cancelled,
}

/// What an extraction produced.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    /// File content bytes written.
    pub bytes: u64,
}

/// Extracts the tar read from `stream` into `dir`. `before_commit` gets the rest of the
/// stream once the archive is fully extracted in staging, and decides whether it is moved
/// into place (it drains the stream and verifies the checksum).
pub fn extract(
    stream: &mut dyn Read,
    dir: &Path,
    cancel: &Arc<AtomicBool>,
    before_commit: impl FnOnce(&mut dyn Read) -> Result<(), crate::ImportError>,
) -> Result<Extracted, crate::ImportError> {
    let staging = dir.join(STAGING);
    remove_all(&staging);
    fs::create_dir(&staging).map_err(|source| ArchiveError::Io { op: "create", path: staging.clone(), source })?;
    let extracted =
        Extractor { root: &staging, stats: Extracted::default(), dir_modes: BTreeMap::new(), symlinks: Vec::new() }
            .run(&mut *stream, cancel);
    let result = match extracted {
        Ok(stats) => before_commit(stream).and_then(|()| {
            move_into_place(&staging, dir)?;
            Ok(stats)
        }),
        Err(ExtractError::Archive(e)) => Err(e.into()),
        Err(ExtractError::Read(e)) => Err(crate::import::read_error(e)),
    };
    remove_all(&staging);
    result
}

enum ExtractError {
    Archive(ArchiveError),
    Read(io::Error),
}

impl From<ArchiveError> for ExtractError {
    fn from(e: ArchiveError) -> ExtractError {
        ExtractError::Archive(e)
    }
}

/// Tar errors mix transport failures (from the reader below) with format errors.
fn tar_error(e: io::Error) -> ExtractError {
    let is_transport = e.get_ref().is_some_and(|inner| {
        inner.is::<crate::source::SourceError>() || inner.is::<crate::decompress::DecompressError>()
    });
    if is_transport { ExtractError::Read(e) } else { ExtractError::Archive(ArchiveError::Malformed(e.to_string())) }
}

struct Extractor<'a> {
    root: &'a Path,
    stats: Extracted,
    /// Directory modes, applied last so read-only directories can still be filled.
    dir_modes: BTreeMap<PathBuf, u32>,
    symlinks: Vec<PathBuf>,
}

impl Extractor<'_> {
    fn run(mut self, stream: &mut dyn Read, cancel: &Arc<AtomicBool>) -> Result<Extracted, ExtractError> {
        let mut archive = tar::Archive::new(stream);
        for entry in archive.entries().map_err(tar_error)? {
            if cancel.load(Ordering::Relaxed) {
                return Err(ArchiveError::Cancelled.into());
            }
            let mut entry = entry.map_err(tar_error)?;
            self.member(&mut entry)?;
        }
        for link in std::mem::take(&mut self.symlinks) {
            self.check_symlink(&link)?;
        }
        for (dir, mode) in self.dir_modes.iter().rev() {
            let path = self.root.join(dir);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).map_err(|source| ArchiveError::Io {
                op: "set the mode of",
                path,
                source,
            })?;
        }
        Ok(self.stats)
    }

    fn member(&mut self, entry: &mut tar::Entry<'_, &mut dyn Read>) -> Result<(), ExtractError> {
        let raw_path = entry.path().map_err(tar_error)?.into_owned();
        let shown = raw_path.display().to_string();
        let kind = entry.header().entry_type();
        let Some(rel) =
            clean_member_path(&raw_path).map_err(|()| ArchiveError::EscapingPath { path: shown.clone() })?
        else {
            return Ok(()); // "." or an empty name: the root itself
        };
        self.check_parents(&rel, &shown)?;
        let path = self.root.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let io_err = |op, source| ArchiveError::Io { op, path: path.clone(), source };
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                ensure_dir(&path).map_err(|e| io_err("create", e))?;
                self.dir_modes.insert(rel, mode | 0o700);
                self.stats.directories += 1;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.make_parent(&path)?;
                replace(&path).map_err(|e| io_err("replace", e))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(mode)
                    .open(&path)
                    .map_err(|e| io_err("create", e))?;
                self.stats.bytes += write_sparse(entry, &mut file).map_err(|e| match e {
                    CopyError::Read(e) => tar_error(e),
                    CopyError::Write(e) => io_err("write", e).into(),
                })?;
                file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io_err("set the mode of", e))?;
                self.stats.files += 1;
            }
            T::Symlink => {
                let target = entry.link_name().map_err(tar_error)?.unwrap_or_default().into_owned();
                // Checked lexically now, and for real once every link exists.
                if target.is_absolute() || resolve(self.root, &rel, &target, false).is_err() {
                    return Err(
                        ArchiveError::EscapingSymlink { path: shown, target: target.display().to_string() }.into()
                    );
                }
                self.make_parent(&path)?;
                replace(&path).map_err(|e| io_err("replace", e))?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| io_err("create the symlink", e))?;
                self.symlinks.push(rel);
                self.stats.links += 1;
            }
            T::Link => {
                let target = entry.link_name().map_err(tar_error)?.unwrap_or_default().into_owned();
                let bad = || ArchiveError::BadHardLink { path: shown.clone(), target: target.display().to_string() };
                let target_rel = clean_member_path(&target).ok().flatten().ok_or_else(bad)?;
                self.check_parents(&target_rel, &shown)?;
                let source = self.root.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(bad().into()),
                }
                self.make_parent(&path)?;
                replace(&path).map_err(|e| io_err("replace", e))?;
                fs::hard_link(&source, &path).map_err(|e| io_err("create the hard link", e))?;
                self.stats.links += 1;
            }
            T::Char | T::Block | T::Fifo => {
                let kind = match kind {
                    T::Char => "character device",
                    T::Block => "block device",
                    _ => "FIFO",
                };
                return Err(ArchiveError::SpecialFile { path: shown, kind }.into());
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => return Err(ArchiveError::UnsupportedMember { path: shown, kind: format!("{other:?}") }.into()),
        }
        Ok(())
    }

    /// Refuses a member whose parent directories include a symlink: writing through it
    /// could land anywhere.
    fn check_parents(&self, rel: &Path, shown: &str) -> Result<(), ArchiveError> {
        let mut at = self.root.to_path_buf();
        let parents: Vec<_> = rel.components().collect();
        for (i, c) in parents.iter().enumerate() {
            if i + 1 == parents.len() {
                break;
            }
            at.push(c);
            if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                let link = at.strip_prefix(self.root).unwrap_or(&at).display().to_string();
                return Err(ArchiveError::ThroughSymlink { path: shown.to_string(), link });
            }
        }
        Ok(())
    }

    fn make_parent(&mut self, path: &Path) -> Result<(), ArchiveError> {
        if let Some(parent) = path.parent() {
            ensure_dir(parent).map_err(|source| ArchiveError::Io {
                op: "create",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    fn check_symlink(&self, rel: &Path) -> Result<(), ArchiveError> {
        let path = self.root.join(rel);
        let target = fs::read_link(&path).map_err(|source| ArchiveError::Io {
            op: "read the symlink",
            path: path.clone(),
            source,
        })?;
        resolve(self.root, rel, &target, true).map_err(|()| ArchiveError::EscapingSymlink {
            path: rel.display().to_string(),
            target: target.display().to_string(),
        })
    }
}

/// A member path made relative and checked: `Ok(None)` for the root itself, `Err` when it
/// has a root, a prefix or `..`.
fn clean_member_path(path: &Path) -> Result<Option<PathBuf>, ()> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return Err(()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// One step of a path being resolved.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(s) => Some(Step::Name(s.to_os_string())),
        Component::CurDir => None,
    })
}

/// Resolves symlink `link` (relative to the root) pointing at `target`, component by
/// component. With `follow`, symlinks met on the way (on disk, under the root) are expanded.
/// `Err` when the resolution leaves the root.
fn resolve(root: &Path, link: &Path, target: &Path, follow: bool) -> Result<(), ()> {
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    for step in steps(link.parent().unwrap_or(Path::new(""))) {
        if let Step::Name(n) = step {
            stack.push(n);
        }
    }
    let mut todo: Vec<Step> = steps(target).rev().collect();
    let mut depth = 0;
    while let Some(step) = todo.pop() {
        match step {
            Step::Root => return Err(()),
            Step::Parent => {
                stack.pop().ok_or(())?;
            }
            Step::Name(name) => {
                stack.push(name);
                if !follow {
                    continue;
                }
                let on_disk = root.join(stack.iter().collect::<PathBuf>());
                if fs::symlink_metadata(&on_disk).is_ok_and(|m| m.file_type().is_symlink()) {
                    depth += 1;
                    if depth > MAX_LINK_DEPTH {
                        return Err(());
                    }
                    let next = fs::read_link(&on_disk).map_err(|_| ())?;
                    stack.pop();
                    todo.extend(steps(&next).rev());
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies a member's content, leaving holes where whole 4 KiB blocks are zero.
fn write_sparse(input: &mut dyn Read, file: &mut File) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        // Runs of data blocks go out in one write: block-sized writes into fresh page-cache
        // folios cost a zeroing each.
        let mut run = 0..0;
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.len() == 4096 && is_zero(block) {
                file.write_all(&buf[run.clone()]).map_err(CopyError::Write)?;
                run = (i + 1) * 4096..(i + 1) * 4096;
                file.seek(SeekFrom::Current(4096)).map_err(CopyError::Write)?;
            } else {
                run.end = i * 4096 + block.len();
            }
        }
        file.write_all(&buf[run]).map_err(CopyError::Write)?;
        len += n as u64;
    }
    file.set_len(len).map_err(CopyError::Write)?;
    Ok(len)
}

fn ensure_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(path)?;
            fs::create_dir_all(path)
        }
        Err(_) => fs::create_dir_all(path),
    }
}

/// Removes a non-directory that a later member replaces (tar's overwrite semantics).
fn replace(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory of the same name exists")),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Moves the staged tree into `dir`, merging into directories that already exist.
fn move_into_place(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    let io_err = |op, path: &Path, source| ArchiveError::Io { op, path: path.to_path_buf(), source };
    for entry in fs::read_dir(from).map_err(|e| io_err("read", from, e))? {
        let entry = entry.map_err(|e| io_err("read", from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let src_is_dir = entry.file_type().map_err(|e| io_err("inspect", &src, e))?.is_dir();
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.is_dir() && src_is_dir => {
                move_into_place(&src, &dst)?;
                continue;
            }
            Ok(m) if m.is_dir() => fs::remove_dir_all(&dst).map_err(|e| io_err("replace", &dst, e))?,
            Ok(_) => fs::remove_file(&dst).map_err(|e| io_err("replace", &dst, e))?,
            Err(_) => {}
        }
        fs::rename(&src, &dst).map_err(|e| io_err("move", &dst, e))?;
    }
    Ok(())
}

fn remove_all(path: &Path) {
    if fs::symlink_metadata(path).is_ok() {
        // Staged directories may have been made read-only by the archive.
        let _ = make_writable(path);
        let _ = fs::remove_dir_all(path);
    }
}

fn make_writable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(path)? {
            make_writable(&entry?.path())?;
        }
    }
    Ok(())
}
