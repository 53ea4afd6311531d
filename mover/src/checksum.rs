//! Source checksums (`md5|sha1|sha256|sha512:HEX`), computed over the bytes as fetched,
//! before any decompression, as CDI's `checksum` field defines them. The spec and the
//! hashers are `cdi-common`'s (the populator validates the same specs); the reader is ours.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

pub use cdi_common::checksum::{Algorithm, Checksum, ChecksumError, Hasher};

/// A reader that feeds everything read through it into a shared [`Hasher`].
///
/// The hasher is shared so the digest can be taken after the reader has been moved into
/// decoder stacks.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Arc<Mutex<Hasher>>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, hasher: Arc<Mutex<Hasher>>) -> HashingReader<R> {
        HashingReader { inner, hasher }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.lock().expect("hasher lock").update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reader_digests_what_passes() {
        let h = Arc::new(Mutex::new(Algorithm::Sha256.hasher()));
        let mut r = HashingReader::new(&b"test"[..], h.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        drop(r);
        let digest = Arc::try_unwrap(h).unwrap().into_inner().unwrap().finish_hex();
        assert_eq!(digest, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }
}
