//! Local files and block devices.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Opened, RandomAccess, SourceError};
use crate::direct_io;

/// A local regular file or block device, read with `pread`.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: File,
    len: u64,
    /// Regular files can tell their holes (`SEEK_DATA`); block devices cannot.
    sparse_aware: bool,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Opened, SourceError> {
        let open_err = |source| SourceError::OpenFile { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let (len, sparse_aware) = if meta.is_file() {
            (meta.len(), true)
        } else if meta.file_type().is_block_device() {
            (direct_io::BlockInfo::query(&file).map_err(open_err)?.size, false)
        } else {
            return Err(SourceError::NotAFile { path: path.to_path_buf() });
        };
        let source = Arc::new(FileSource { path: path.to_path_buf(), file, len, sparse_aware });
        let stream_source = source.clone();
        Ok(Opened::new(path.display().to_string(), Some(len), Some(source), move || {
            Ok(Box::new(FileStream { source: stream_source, pos: 0 }) as Box<dyn Read + Send>)
        }))
    }
}

impl RandomAccess for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(SourceError::OutOfBounds { offset, len: buf.len() as u64, size: self.len });
        }
        direct_io::read_exact_at(&self.file, buf, offset).map_err(|source| SourceError::ReadFile {
            path: self.path.clone(),
            offset,
            source,
        })
    }

    fn next_data(&self, offset: u64) -> Option<(u64, u64)> {
        if offset >= self.len {
            return None;
        }
        if !self.sparse_aware {
            return Some((offset, self.len));
        }
        match direct_io::next_data(&self.file, offset) {
            Ok(Some((start, end))) => Some((start, end.min(self.len))),
            Ok(None) => None,
            Err(_) => Some((offset, self.len)),
        }
    }
}

/// Sequential reads of a [`FileSource`], by position, so the file can also serve `pread`s.
#[derive(Debug)]
struct FileStream {
    source: Arc<FileSource>,
    pos: u64,
}

impl Read for FileStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match std::os::unix::fs::FileExt::read_at(&self.source.file, buf, self.pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(
                        SourceError::ReadFile { path: self.source.path.clone(), offset: self.pos, source }.into_io()
                    );
                }
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}
