//! One target, one writer: every Populate task, WriteVolume and ReadVolume claims its
//! target before touching it, and a claim that collides with another is refused.
//!
//! Targets are compared by what they are on this node, not by how they were spelled: a
//! host path and a pod volume (resolved under the kubelet root, perhaps through a bind
//! mount or a symlink) that lead to the same place are the same target.
//! * a block device is its device number (two device nodes of one device collide);
//! * a directory is its inode; it also covers everything beneath it (a volume's
//!   `disk.img`, an archive's files), so a file or directory inside it collides too;
//! * a file is its name in its directory (the directory by inode): the writer puts the
//!   image beside it as `NAME.partial` and renames it over that name.
//!
//! Writers exclude everyone; readers (ReadVolume) only exclude writers.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A directory or file as the kernel knows it: (device, inode).
type Inode = (u64, u64);

/// What a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Where a target is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Device(u64),
    Dir(Inode),
    File {
        dir: Inode,
        name: OsString,
    },
    /// What cannot be looked at (a missing parent): the path as given. Its task fails on
    /// its own, with the error that says why.
    Unresolved(PathBuf),
}

/// A target's place, and the directories above it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    place: Place,
    ancestors: Vec<Inode>,
}

impl Target {
    fn of(path: &Path) -> Target {
        let inode = |m: &fs::Metadata| (m.dev(), m.ino());
        let unresolved = || Target { place: Place::Unresolved(path.to_path_buf()), ancestors: Vec::new() };
        match fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => {
                Target { place: Place::Device(m.rdev()), ancestors: Vec::new() }
            }
            Ok(m) if m.is_dir() => {
                let Ok(real) = fs::canonicalize(path) else { return unresolved() };
                Target { place: Place::Dir(inode(&m)), ancestors: ancestors(real.parent()) }
            }
            // A file, existing or not: its name in its directory.
            _ => {
                let (Some(name), Some(parent)) = (path.file_name(), path.parent()) else { return unresolved() };
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                let (Ok(meta), Ok(real)) = (fs::metadata(parent), fs::canonicalize(parent)) else {
                    return unresolved();
                };
                Target {
                    place: Place::File { dir: inode(&meta), name: name.to_os_string() },
                    ancestors: ancestors(Some(&real)),
                }
            }
        }
    }

    fn collides(&self, other: &Target) -> bool {
        let covers = |a: &Target, b: &Target| matches!(a.place, Place::Dir(d) if b.ancestors.contains(&d));
        self.place == other.place || covers(self, other) || covers(other, self)
    }
}

/// The inodes of `dir` and every directory above it.
fn ancestors(dir: Option<&Path>) -> Vec<Inode> {
    dir.map(|d| d.ancestors().filter_map(|a| fs::metadata(a).ok()).map(|m| (m.dev(), m.ino())).collect())
        .unwrap_or_default()
}

#[derive(Debug)]
struct Held {
    id: u64,
    target: Target,
    access: Access,
    holder: String,
}

/// The claims held on this mover's targets.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<(u64, Vec<Held>)>,
}

/// A target in use by someone else.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "target {target} is in use by {holder}: a target takes one writer at a time, and no reader while it is \
     written; retry once that has finished, or cancel it"
)]
pub struct Busy {
    pub target: String,
    pub holder: String,
}

/// A target held until dropped.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    id: u64,
}

impl Claims {
    pub fn new() -> Arc<Claims> {
        Arc::new(Claims::default())
    }

    /// Claims the target at `path` (shown as `shown`) for `holder`, e.g. "task 1234".
    ///
    /// # Errors
    /// [`Busy`] when a writer holds the same target, or this is a writer and anyone does.
    pub fn claim(self: &Arc<Self>, path: &Path, shown: &str, access: Access, holder: String) -> Result<Claim, Busy> {
        // Looked at before locking: a stat of a hung mount must not stall every other claim.
        let target = Target::of(path);
        let mut held = self.held.lock().expect("claims lock");
        let clash = held
            .1
            .iter()
            .find(|h| (access == Access::Write || h.access == Access::Write) && h.target.collides(&target));
        if let Some(h) = clash {
            return Err(Busy { target: shown.to_string(), holder: h.holder.clone() });
        }
        held.0 += 1;
        let id = held.0;
        held.1.push(Held { id, target, access, holder });
        Ok(Claim { claims: self.clone(), id })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.held.lock().expect("claims lock").1.retain(|h| h.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(claims: &Arc<Claims>, path: &Path, who: &str) -> Result<Claim, Busy> {
        claims.claim(path, &path.display().to_string(), Access::Write, who.to_string())
    }

    #[test]
    fn the_same_target_spelled_another_way_is_the_same_target() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir(&vol).unwrap();
        std::os::unix::fs::symlink(&vol, dir.path().join("link")).unwrap();
        let claims = Claims::new();
        let first = write(&claims, &vol, "task a").unwrap();
        let err = write(&claims, &dir.path().join("link"), "task b").unwrap_err();
        assert_eq!(err.holder, "task a");
        assert!(write(&claims, &dir.path().join("link/./disk.img"), "task c").is_err(), "a file inside a volume");
        assert!(write(&claims, &dir.path().join("other.raw"), "task d").is_ok(), "another target");
        drop(first);
        assert!(write(&claims, &dir.path().join("link"), "task b").is_ok(), "released with its claim");
    }

    #[test]
    fn files_collide_by_name_whether_or_not_they_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::new();
        let _a = write(&claims, &dir.path().join("out.raw"), "task a").unwrap();
        assert!(write(&claims, &dir.path().join("./out.raw"), "task b").is_err());
        assert!(write(&claims, &dir.path().join("out2.raw"), "task c").is_ok());
    }

    #[test]
    fn readers_share_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::new();
        let read = |who: &str| claims.claim(dir.path(), "vol", Access::Read, who.to_string());
        let r1 = read("reader 1").unwrap();
        let _r2 = read("reader 2").unwrap();
        assert!(write(&claims, dir.path(), "task a").is_err());
        drop(r1);
        assert!(write(&claims, dir.path(), "task a").is_err(), "one reader is still there");
    }
}
