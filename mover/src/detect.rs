//! Format detection by magic bytes. CDI's API has no format field, so what a source holds is
//! decided here, from its first bytes, and then parsed as untrusted input.

use std::io::{self, Read};

/// How many leading bytes detection looks at (enough for ISO's `CD001` at 0x8001 and for a
/// qcow2 header with its extensions).
pub const SNIFF_LEN: usize = 64 << 10;

/// An outer compression layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

/// What the (decompressed) bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    /// An ISO 9660 image: copied as raw bytes, as CDI does.
    Iso,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
    Tar,
}

/// One step of detection: either a compression layer to peel, or the innermost format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Compressed(Compression),
    Image(ImageFormat),
}

impl Detected {
    /// The name used in the format chain of results ("xz", "qcow2", ...).
    pub fn name(self) -> &'static str {
        match self {
            Detected::Compressed(Compression::Gzip) => "gz",
            Detected::Compressed(Compression::Xz) => "xz",
            Detected::Compressed(Compression::Zstd) => "zst",
            Detected::Image(ImageFormat::Raw) => "raw",
            Detected::Image(ImageFormat::Iso) => "iso",
            Detected::Image(ImageFormat::Qcow2) => "qcow2",
            Detected::Image(ImageFormat::Vmdk) => "vmdk",
            Detected::Image(ImageFormat::Vhd) => "vhd",
            Detected::Image(ImageFormat::Vhdx) => "vhdx",
            Detected::Image(ImageFormat::Vdi) => "vdi",
            Detected::Image(ImageFormat::Tar) => "tar",
        }
    }
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Classifies the leading bytes of a stream. Anything unrecognised is raw.
pub fn sniff(head: &[u8]) -> Detected {
    use Detected::*;
    if at(head, 0, &[0x1f, 0x8b]) {
        Compressed(Compression::Gzip)
    } else if at(head, 0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compressed(Compression::Xz)
    } else if at(head, 0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Compressed(Compression::Zstd)
    } else if at(head, 0, b"QFI\xfb") {
        Image(ImageFormat::Qcow2)
    } else if at(head, 0, b"KDMV") {
        Image(ImageFormat::Vmdk)
    } else if at(head, 0, b"conectix") {
        Image(ImageFormat::Vhd)
    } else if at(head, 0, b"vhdxfile") {
        Image(ImageFormat::Vhdx)
    } else if at(head, 0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Image(ImageFormat::Vdi)
    } else if at(head, 257, b"ustar") {
        Image(ImageFormat::Tar)
    } else if at(head, 0x8001, b"CD001") {
        Image(ImageFormat::Iso)
    } else {
        Image(ImageFormat::Raw)
    }
}

/// A reader that has read ahead up to [`SNIFF_LEN`] bytes for detection and replays them.
#[derive(Debug)]
pub struct Peeked<R> {
    head: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Peeked<R> {
    /// Reads up to `len` bytes ahead (fewer only at end of stream).
    pub fn new(mut inner: R, len: usize) -> io::Result<Peeked<R>> {
        let mut head = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match inner.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(filled);
        Ok(Peeked { head, pos: 0, inner })
    }

    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                // Give the read-ahead memory back once replayed.
                self.head = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 0x9000];
        v[offset..offset + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn recognises_every_magic() {
        use Detected::*;
        assert_eq!(sniff(&with(0, &[0x1f, 0x8b, 8])), Compressed(Compression::Gzip));
        assert_eq!(sniff(&with(0, b"\xfd7zXZ\x00")), Compressed(Compression::Xz));
        assert_eq!(sniff(&with(0, &[0x28, 0xb5, 0x2f, 0xfd])), Compressed(Compression::Zstd));
        assert_eq!(sniff(&with(0, b"QFI\xfb")), Image(ImageFormat::Qcow2));
        assert_eq!(sniff(&with(0, b"KDMV")), Image(ImageFormat::Vmdk));
        assert_eq!(sniff(&with(0, b"conectix")), Image(ImageFormat::Vhd));
        assert_eq!(sniff(&with(0, b"vhdxfile")), Image(ImageFormat::Vhdx));
        assert_eq!(sniff(&with(0x40, &[0x7f, 0x10, 0xda, 0xbe])), Image(ImageFormat::Vdi));
        assert_eq!(sniff(&with(257, b"ustar")), Image(ImageFormat::Tar));
        assert_eq!(sniff(&with(0x8001, b"CD001")), Image(ImageFormat::Iso));
        assert_eq!(sniff(&with(100, b"anything")), Image(ImageFormat::Raw));
        assert_eq!(sniff(b""), Image(ImageFormat::Raw));
        assert_eq!(sniff(b"QF"), Image(ImageFormat::Raw));
    }

    #[test]
    fn peeked_replays_the_head_then_continues() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut p = Peeked::new(&data[..], 300).unwrap();
        assert_eq!(p.head(), &data[..300]);
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
