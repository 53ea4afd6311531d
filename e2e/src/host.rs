//! What the stand-ins do to this machine: sparse backing files, loop devices, ext4
//! filesystems, bind mounts, device nodes, and child processes — and the one cleanup that
//! undoes all of it for a cluster directory, whatever state a crash left behind.
//!
//! Everything the cluster creates on the host lies under its directory (or is a loop device
//! whose backing file does), so cleanup finds it by path rather than by bookkeeping.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, killpg};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::Pid;

/// A failed host operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HostError + 'a {
    move |source| HostError::Io { what, path: path.to_path_buf(), source }
}

fn run(cmd: &mut Command) -> Result<String, HostError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| HostError::Command { command: shown.clone(), stderr: e.to_string() })?;
    if !out.status.success() {
        return Err(HostError::Command { command: shown, stderr: String::from_utf8_lossy(&out.stderr).trim().into() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> Result<(), HostError> {
    let f = fs::OpenOptions::new().create(true).truncate(true).write(true).open(path).map_err(io("create", path))?;
    f.set_len(size).map_err(io("truncate", path))
}

/// Copies `src` to a new file `dst`, leaving holes where `src` reads as zeros (volume images
/// are mostly empty: a plain copy would write every byte).
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<(), HostError> {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let mut from = fs::File::open(src).map_err(io("open", src))?;
    let mut to = fs::OpenOptions::new().create(true).truncate(true).write(true).open(dst).map_err(io("create", dst))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(io("read", src))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            to.seek(SeekFrom::Current(n as i64)).map_err(io("seek", dst))?;
        } else {
            to.write_all(&buf[..n]).map_err(io("write", dst))?;
        }
        len += n as u64;
    }
    to.set_len(len).map_err(io("truncate", dst))
}

/// Attaches a loop device to `file` and returns its path (`/dev/loopN`).
pub fn loop_attach(file: &Path) -> Result<PathBuf, HostError> {
    run(Command::new("losetup").args(["-f", "--show", "--direct-io=on"]).arg(file)).map(PathBuf::from)
}

/// Detaches `dev` and waits (up to 5 s) until it is gone: on a device something still holds
/// open (udev probing a new device, say) `losetup -d` only marks it to go at the last close.
pub fn loop_detach(dev: &Path) -> Result<(), HostError> {
    loop_release(dev)?;
    let name = dev.file_name().unwrap_or_default();
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while backing.exists() {
        if std::time::Instant::now() > deadline {
            return Err(HostError::Command {
                command: format!("losetup -d {}", dev.display()),
                stderr: "the device is still attached 5 s later (held open)".into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// `losetup -d` without waiting: the device goes now, or at its last close.
fn loop_release(dev: &Path) -> Result<(), HostError> {
    run(Command::new("losetup").arg("-d").arg(dev)).map(drop)
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) else { continue };
        let backing = backing.trim().trim_end_matches(" (deleted)");
        if Path::new(backing).starts_with(dir) {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out
}

/// Makes an ext4 filesystem on `dev` (quietly, without lazy init so it is ready at once).
pub fn mkfs_ext4(dev: &Path) -> Result<(), HostError> {
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(dev))
        .map(|_| ())
}

/// Grows the (unmounted) ext4 filesystem in image `file` to the file's length. Offline:
/// online resizing needs an ioctl that containers commonly deny. resize2fs insists on a
/// freshly checked filesystem; e2fsck's exit status 1 means it corrected something (such
/// as replaying the journal of a copy taken while mounted), which is fine here.
pub fn grow_ext4_image(file: &Path) -> Result<(), HostError> {
    let mut fsck = Command::new("e2fsck");
    fsck.args(["-f", "-p"]).arg(file);
    let shown = format!("{fsck:?}");
    let out = fsck.output().map_err(|e| HostError::Command { command: shown.clone(), stderr: e.to_string() })?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(HostError::Command { command: shown, stderr: String::from_utf8_lossy(&out.stdout).trim().into() });
    }
    run(Command::new("resize2fs").arg(file)).map(|_| ())
}

pub fn have_mkfs_ext4() -> bool {
    Command::new("mkfs.ext4").arg("-V").output().is_ok_and(|o| o.status.success())
}

pub fn mount_ext4(dev: &Path, target: &Path) -> Result<(), HostError> {
    fs::create_dir_all(target).map_err(io("mkdir", target))?;
    nix::mount::mount(Some(dev), target, Some("ext4"), MsFlags::empty(), None::<&str>)
        .map_err(|source| HostError::Sys { what: "mount", path: target.to_path_buf(), source })
}

pub fn bind_mount(src: &Path, target: &Path) -> Result<(), HostError> {
    fs::create_dir_all(target).map_err(io("mkdir", target))?;
    nix::mount::mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|source| HostError::Sys { what: "bind mount", path: target.to_path_buf(), source })
}

/// Makes `dir` a mount point of its own whose mounts propagate (a shared subtree). A pod's
/// process in a mount namespace of its own (the kubelet's service-account identity) holds
/// copies of the mounts that existed when it started; with the subtree shared, the host's
/// later mounts and unmounts under `dir` reach those copies, so such a process never keeps a
/// volume (and its loop device) of this or another cluster alive after the host let go.
pub fn share_mounts(dir: &Path) -> Result<(), HostError> {
    bind_mount(dir, dir)?;
    nix::mount::mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .map_err(|source| HostError::Sys { what: "make shared", path: dir.to_path_buf(), source })
}

/// Unmounts `target` (lazily, so a process still holding a file does not block teardown).
pub fn unmount(target: &Path) -> Result<(), HostError> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(HostError::Sys { what: "unmount", path: target.to_path_buf(), source }),
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// A block device node at `path` for the same device as `dev`, as the kubelet publishes
/// block volumes into a pod's `volumeDevices` directory.
pub fn device_node_like(dev: &Path, path: &Path) -> Result<(), HostError> {
    let meta = fs::metadata(dev).map_err(io("stat", dev))?;
    if !meta.file_type().is_block_device() {
        return Err(HostError::Io {
            what: "not a block device",
            path: dev.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
    }
    let _ = fs::remove_file(path);
    nix::sys::stat::mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), meta.rdev())
        .map_err(|source| HostError::Sys { what: "mknod", path: path.to_path_buf(), source })
}

/// Process groups of the cluster's children, so that every exit path can end them.
#[derive(Debug, Clone, Default)]
pub struct Children(Arc<Mutex<HashSet<i32>>>);

impl Children {
    pub fn add(&self, pgid: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pgid);
    }

    pub fn remove(&self, pgid: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&pgid);
    }

    pub fn signal(&self, pgid: i32, sig: Signal) {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }

    pub fn kill_all(&self) {
        let pgids: Vec<i32> = self.0.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for p in pgids {
            let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// Undoes everything under `dir`: kills the children, unmounts every mount, detaches every
/// loop device backed by a file there. Safe to call repeatedly.
pub fn cleanup(dir: &Path, children: &Children) {
    children.kill_all();
    // Listed and detached before anything is unmounted: once the directory's own bind mount
    // (share_mounts) is gone, a device's backing file no longer reads as under `dir`, and it
    // would stay attached, holding its deleted file's blocks. A device still mounted is only
    // marked to detach on its last close, which the unmounts below bring.
    let loops = loops_under(dir);
    for l in &loops {
        if let Err(e) = loop_release(l) {
            tracing::warn!(error = %e, "cleanup");
        }
    }
    for m in mounts_under(dir) {
        if let Err(e) = unmount(&m) {
            tracing::warn!(error = %e, "cleanup");
        }
    }
    // A lazy unmount or a killed process not yet gone closes the device later. The kernel
    // announces that to no one we can wait on, so look again, bounded, and callers find
    // nothing left behind.
    let attached = |l: &PathBuf| {
        let name = l.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Path::new("/sys/block").join(name).join("loop/backing_file").exists()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while loops.iter().any(attached) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for l in loops.iter().filter(|l| attached(l)) {
        tracing::warn!(device = %l.display(), "cleanup: the loop device is still attached 10 s later (held open)");
    }
}
