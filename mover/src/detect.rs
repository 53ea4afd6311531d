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
    /// A format qemu-img reads but CDI refuses (and so do we), named so the refusal says
    /// what the image is instead of importing its bytes as a raw disk.
    Foreign(Foreign),
}

/// Images recognised only to be refused with their name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// A VMDK text descriptor: the data is in other files (flat, split or multi-extent).
    VmdkDescriptor,
    /// VMware's old sparse format (vmfsSparse / ESX 2 "COWD").
    VmdkCowd,
    Qed,
    Parallels,
    Luks,
    Bochs,
    Cloop,
    /// Apple disk image: its "koly" trailer is in the last 512 bytes.
    Dmg,
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
            Detected::Image(ImageFormat::Foreign(f)) => match f {
                Foreign::VmdkDescriptor => "vmdk descriptor",
                Foreign::VmdkCowd => "vmdk (COWD)",
                Foreign::Qed => "qed",
                Foreign::Parallels => "parallels",
                Foreign::Luks => "luks",
                Foreign::Bochs => "bochs",
                Foreign::Cloop => "cloop",
                Foreign::Dmg => "dmg",
            },
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
    } else if let Some(foreign) = sniff_foreign(head) {
        Image(ImageFormat::Foreign(foreign))
    } else if at(head, 257, b"ustar") {
        Image(ImageFormat::Tar)
    } else if at(head, 0x8001, b"CD001") {
        Image(ImageFormat::Iso)
    } else {
        Image(ImageFormat::Raw)
    }
}

/// Formats recognised by their first bytes only to be refused.
fn sniff_foreign(head: &[u8]) -> Option<Foreign> {
    if at(head, 0, b"COWD") {
        Some(Foreign::VmdkCowd)
    } else if at(head, 0, b"QED\0") {
        Some(Foreign::Qed)
    } else if at(head, 0, b"WithoutFreeSpace") || at(head, 0, b"WithouFreSpacExt") {
        Some(Foreign::Parallels)
    } else if at(head, 0, b"LUKS\xba\xbe") {
        Some(Foreign::Luks)
    } else if at(head, 0, b"Bochs Virtual HD Image") {
        Some(Foreign::Bochs)
    } else if at(head, 0, b"#!/bin/sh\n#V2.0 Format\n") {
        Some(Foreign::Cloop)
    } else if is_vmdk_descriptor(head) {
        Some(Foreign::VmdkDescriptor)
    } else {
        None
    }
}

/// A VMDK descriptor file, as qemu probes one: after comment and blank lines, the first line
/// is `version=1`, `2` or `3`.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    let text = &head[..head.len().min(4096)];
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii_start();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        return matches!(trimmed, b"version=1" | b"version=2" | b"version=3");
    }
    false
}

/// What the last 512 bytes of an image say it is, when they say anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer {
    /// A fixed VHD: the first `data_len` bytes are the disk, `virtual_size` its size.
    FixedVhd {
        virtual_size: u64,
        data_len: u64,
    },
    Dmg,
}

/// Looks at the last bytes of an image (at least 512 of them) whose first bytes looked raw.
pub fn sniff_tail(tail: &[u8], image_len: u64) -> Result<Option<Trailer>, crate::format::FormatError> {
    let Some(last) = tail.len().checked_sub(512).map(|start| &tail[start..]) else { return Ok(None) };
    if let Some((virtual_size, data_len)) = crate::format::vhd::Footer::fixed_at_end(last, image_len)? {
        return Ok(Some(Trailer::FixedVhd { virtual_size, data_len }));
    }
    // Apple's UDIF trailer: "koly", version 4, header size 512.
    if at(last, 0, b"koly") && at(last, 4, &4u32.to_be_bytes()) && at(last, 8, &512u32.to_be_bytes()) {
        return Ok(Some(Trailer::Dmg));
    }
    Ok(None)
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
    fn formats_cdi_refuses_are_named_not_taken_for_raw() {
        use Detected::*;
        let foreign = |head: &[u8]| match sniff(head) {
            Image(ImageFormat::Foreign(f)) => Some(f),
            _ => None,
        };
        assert_eq!(foreign(&with(0, b"COWD")), Some(Foreign::VmdkCowd));
        assert_eq!(foreign(&with(0, b"QED\0")), Some(Foreign::Qed));
        assert_eq!(foreign(&with(0, b"WithoutFreeSpace")), Some(Foreign::Parallels));
        assert_eq!(foreign(&with(0, b"LUKS\xba\xbe")), Some(Foreign::Luks));
        assert_eq!(foreign(&with(0, b"Bochs Virtual HD Image")), Some(Foreign::Bochs));
        assert_eq!(foreign(&with(0, b"#!/bin/sh\n#V2.0 Format\n")), Some(Foreign::Cloop));
        let descriptor = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nRW 204800 FLAT \"d-flat.vmdk\" 0\n";
        assert_eq!(foreign(descriptor), Some(Foreign::VmdkDescriptor));
        assert_eq!(foreign(b"\r\n# comment\r\n  version=3\r\n"), Some(Foreign::VmdkDescriptor));
        assert_eq!(foreign(b"# a text file\nversion=12\n"), None);
    }

    #[test]
    fn trailers_are_recognised_at_the_end_only() {
        let footer = crate::format::vhd::tests::mk_footer(2, 1 << 20, b"qem2", (1, 1, 1));
        assert_eq!(
            sniff_tail(&footer, (1 << 20) + 512).unwrap(),
            Some(Trailer::FixedVhd { virtual_size: 1 << 20, data_len: 1 << 20 })
        );
        let mut koly = vec![0u8; 512];
        koly[..4].copy_from_slice(b"koly");
        koly[4..8].copy_from_slice(&4u32.to_be_bytes());
        koly[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(sniff_tail(&koly, 1 << 20).unwrap(), Some(Trailer::Dmg));
        assert_eq!(sniff_tail(&[0u8; 512], 1 << 20).unwrap(), None);
        assert_eq!(sniff_tail(&[0u8; 100], 100).unwrap(), None);
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
