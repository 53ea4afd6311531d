//! The one owner of `O_DIRECT`, aligned memory and block-device ioctls.
//!
//! Every `unsafe` block of the crate lives here, each with a `SAFETY:` note; callers get a
//! safe API: [`AlignedBuf`], [`open`], [`BlockInfo::query`], [`zero_block_range`].

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: enough for direct I/O on any Linux block device
/// (logical blocks are at most 4 KiB) and for page-granular zero detection.
pub const BUF_ALIGN: usize = 4096;

/// A heap buffer whose start is aligned to [`BUF_ALIGN`], usable for `O_DIRECT` I/O.
///
/// It has a fixed capacity and a length (`len() <= capacity()`); the bytes up to the
/// capacity are always initialised (zeroed on allocation), so resizing never exposes
/// uninitialised memory.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reading the bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` zeroed bytes (rounded up to [`BUF_ALIGN`]).
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(BUF_ALIGN).next_multiple_of(BUF_ALIGN);
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the length; the bytes keep whatever they held (they are always initialised).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len({len}) beyond capacity {}", self.cap);
        self.len = len;
    }

    /// The whole capacity, for filling before [`AlignedBuf::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap initialised bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("buffer layout");
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).field("cap", &self.cap).finish()
    }
}

/// Whether `data` can be handed to a direct-I/O write at `offset` as it is.
pub fn is_aligned(data: &[u8], offset: u64, align: usize) -> bool {
    (data.as_ptr() as usize).is_multiple_of(align)
        && data.len().is_multiple_of(align)
        && offset.is_multiple_of(align as u64)
}

/// How a file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT`: writes bypass the page cache and must be aligned.
    Direct { align: usize },
    /// Through the page cache (direct I/O unsupported by the filesystem, e.g. tmpfs).
    Buffered,
}

/// Opens `path` for writing, with `O_DIRECT` when `direct` is asked and the filesystem
/// supports it; otherwise through the page cache.
pub fn open(path: &Path, direct: bool, create: bool) -> io::Result<(File, IoMode)> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(create);
    if create {
        opts.mode(0o660);
    }
    if direct {
        let mut direct_opts = opts.clone();
        direct_opts.custom_flags(libc::O_DIRECT);
        match direct_opts.open(path) {
            Ok(file) => {
                let align = direct_alignment(&file)?;
                return Ok((file, IoMode::Direct { align }));
            }
            // EINVAL: the filesystem does not do direct I/O (tmpfs, some FUSE mounts).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "direct I/O not supported here; writing through the page cache");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((opts.open(path)?, IoMode::Buffered))
}

/// Opens `path` read-only, with `O_DIRECT` when `direct` is asked and the filesystem
/// supports it (a large sequential read then leaves the page cache alone); otherwise through
/// the page cache. `untrusted` (a name inside a volume, which its users control) refuses a
/// symlink in the last component and never blocks on a FIFO swapped in under that name.
pub fn open_read(path: &Path, direct: bool, untrusted: bool) -> io::Result<(File, IoMode)> {
    let flags = if untrusted { libc::O_NOFOLLOW | libc::O_NONBLOCK } else { 0 };
    if direct {
        match OpenOptions::new().read(true).custom_flags(flags | libc::O_DIRECT).open(path) {
            Ok(file) => {
                let align = direct_alignment(&file)?;
                return Ok((file, IoMode::Direct { align }));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((OpenOptions::new().read(true).custom_flags(flags).open(path)?, IoMode::Buffered))
}

/// The alignment direct I/O needs on `file`: the logical block size for a block device,
/// [`BUF_ALIGN`] for regular files (safe on every filesystem block size Linux supports).
fn direct_alignment(file: &File) -> io::Result<usize> {
    if file.metadata()?.file_type().is_block_device() {
        let info = BlockInfo::query(file)?;
        Ok(info.logical_block_size.max(512) as usize)
    } else {
        Ok(BUF_ALIGN)
    }
}

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

/// The kernel's `struct loop_info64` (`linux/loop.h`), as `LOOP_GET_STATUS64` fills it.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// What a loop device reads from: its backing file, opened read-only, and where in that
/// file the device's first byte is. The file's holes are the device's holes.
#[derive(Debug)]
pub struct LoopBacking {
    pub file: File,
    pub offset: u64,
}

/// The backing file of `dev` when it is a loop device whose backing file is reachable
/// here and is the very file the kernel reads (same filesystem and inode, checked after
/// opening, so a file renamed or replaced since the device was set up is never taken for
/// it). `None` for any other block device, or when that cannot be established: the
/// caller then reads the whole device, which is always correct.
pub fn loop_backing(dev: &File) -> Option<LoopBacking> {
    use std::os::unix::fs::MetadataExt;
    let rdev = dev.metadata().ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    // Only loop devices have this attribute; it holds the full path (`lo_file_name` is
    // cut at 64 bytes), with " (deleted)" appended once the file is unlinked.
    let name = std::fs::read(format!("/sys/dev/block/{major}:{minor}/loop/backing_file")).ok()?;
    let name = name.strip_suffix(b"\n").unwrap_or(&name);
    let path = Path::new(std::ffi::OsStr::from_bytes(name));
    // SAFETY: all-zero bytes are a valid `LoopInfo64` (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open block device and `info` is a valid out-parameter of the size
    // the kernel writes.
    unsafe { loop_get_status64(dev.as_raw_fd(), &mut info) }.ok()?;
    if info.lo_encrypt_type != 0 {
        return None;
    }
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    let meta = file.metadata().ok()?;
    // `lo_device` is the kernel's 32-bit device encoding (major in bits 8-19, minor in
    // bits 0-7 and 20-31).
    let (lo_major, lo_minor) =
        ((info.lo_device >> 8) & 0xfff, (info.lo_device & 0xff) | ((info.lo_device >> 12) & 0xfff00));
    let same = meta.is_file()
        && meta.ino() == info.lo_inode
        && u64::from(libc::major(meta.dev())) == lo_major
        && u64::from(libc::minor(meta.dev())) == lo_minor;
    same.then_some(LoopBacking { file, offset: info.lo_offset })
}

/// Size and geometry of a block device.
#[derive(Debug, Clone, Copy)]
pub struct BlockInfo {
    pub size: u64,
    pub logical_block_size: u32,
}

impl BlockInfo {
    pub fn query(file: &File) -> io::Result<BlockInfo> {
        let fd = file.as_raw_fd();
        let mut size: u64 = 0;
        // SAFETY: fd is an open descriptor and `size` is a valid u64 out-parameter.
        unsafe { blkgetsize64(fd, &mut size) }.map_err(io::Error::from)?;
        let mut lbs: libc::c_int = 0;
        // SAFETY: fd is an open descriptor and `lbs` is a valid c_int out-parameter.
        unsafe { blksszget(fd, &mut lbs) }.map_err(io::Error::from)?;
        Ok(BlockInfo { size, logical_block_size: lbs.max(512) as u32 })
    }
}

/// How [`zero_range`] made a range read back as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroed {
    /// Deallocated (hole punched / unmapped) with a zero-read guarantee.
    Punched,
    /// The device wrote zeros (possibly offloaded, e.g. WRITE SAME / WRITE ZEROES).
    ZeroedOut,
}

/// Makes `[offset, offset + len)` of a block device read back as zeros, never leaving stale
/// bytes: first a hole punch, which the kernel only performs when the device guarantees
/// zeros afterwards (it is not a plain discard), then `BLKZEROOUT`, which falls back to
/// writing zeros itself. Offset and length must be multiples of the logical block size.
pub fn zero_block_range(file: &File, offset: u64, len: u64) -> io::Result<Zeroed> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, flags, offset as libc::off_t, len as libc::off_t) {
        Ok(()) => return Ok(Zeroed::Punched),
        Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    zero_out(file, offset, len)?;
    Ok(Zeroed::ZeroedOut)
}

/// `BLKZEROOUT`: the device writes zeros over `[offset, offset + len)` (offloaded where it
/// can, by the kernel writing zero pages where it cannot) and keeps the range allocated.
/// Offset and length must be multiples of the logical block size.
pub fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: fd is an open block device and `range` is a valid [u64; 2] in-parameter.
    unsafe { blkzeroout(file.as_raw_fd(), &range) }.map_err(io::Error::from)?;
    Ok(())
}

/// Allocates `[offset, offset + len)` of a regular file (reads as zero), for preallocation.
pub fn allocate_file_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    if len == 0 {
        return Ok(());
    }
    fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t)
        .map_err(io::Error::from)
}

/// Deallocates `[offset, offset + len)` of a regular file; it reads back as zeros.
pub fn punch_file_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    if len == 0 {
        return Ok(());
    }
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file, flags, offset as libc::off_t, len as libc::off_t).map_err(io::Error::from)
}

/// Starts writing back the dirty pages of `[offset, offset + len)` without waiting for
/// them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`).
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// Waits until `[offset, offset + len)` is on the device, then drops from the page cache
/// what of it can be dropped already (see [`drop_cached`]).
pub fn settle(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_file_range(file, offset, len, wait)?;
    drop_cached(file, offset, len)
}

/// Drops the clean pages of `[offset, offset + len)` from the page cache. Pages written
/// back a moment ago may still be held (ext4 converting their extents), so callers ask
/// again later.
pub fn drop_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(io::Error::from)
}

fn sync_file_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: plain integers and a file descriptor that `file` keeps open for the call.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `pwrite` all of `data` at `offset`, retrying short writes and `EINTR`.
pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

/// `pread` exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// The next data region at or after `offset` of a sparse regular file (`SEEK_DATA` /
/// `SEEK_HOLE`), or `None` past the last one. Errors mean "cannot tell": treat as data.
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let start = match lseek(file, offset as libc::off_t, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(nix::errno::Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let end = lseek(file, start as libc::off_t, Whence::SeekHole).map_err(io::Error::from)? as u64;
    Ok(Some((start, end)))
}

/// Whether `path` is a block device.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(10_000);
        assert_eq!(b.capacity(), 12_288);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.spare_mut().iter().all(|&x| x == 0));
        b.set_len(100);
        assert_eq!(b.len(), 100);
    }

    #[test]
    fn alignment_check_covers_pointer_length_and_offset() {
        let mut b = AlignedBuf::new(8192);
        b.set_len(8192);
        assert!(is_aligned(&b, 4096, 4096));
        assert!(!is_aligned(&b[..100], 0, 4096));
        assert!(!is_aligned(&b[512..4608], 0, 4096));
        assert!(!is_aligned(&b[..4096], 512, 4096));
        assert!(is_aligned(&b[512..1024], 512, 512));
    }
}
