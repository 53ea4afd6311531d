//! Source checksums (`md5|sha1|sha256|sha512:HEX`), computed over the bytes as fetched,
//! before any decompression, as CDI's `checksum` field defines them.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// An expected checksum, parsed from `ALGO:HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// Lower-case hex digits.
    pub hex: String,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// Why a checksum argument was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumParseError {
    #[error("checksum {0:?} is not ALGORITHM:HEX (e.g. sha256:9f86d0...)")]
    Shape(String),
    #[error("checksum algorithm {0:?} is not supported; use md5, sha1, sha256 or sha512")]
    Algorithm(String),
    #[error("{algorithm} checksum must be {expected} hex digits, got {got:?}")]
    Digits { algorithm: &'static str, expected: usize, got: String },
}

impl FromStr for Checksum {
    type Err = ChecksumParseError;

    fn from_str(s: &str) -> Result<Checksum, ChecksumParseError> {
        let (algo, hex) = s.split_once(':').ok_or_else(|| ChecksumParseError::Shape(s.to_string()))?;
        let algorithm = match algo.to_ascii_lowercase().as_str() {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(ChecksumParseError::Algorithm(algo.to_string())),
        };
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumParseError::Digits {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                got: hex,
            });
        }
        Ok(Checksum { algorithm, hex })
    }
}

/// A running digest of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish_hex(self) -> String {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        match self {
            Hasher::Md5(h) => hex(&h.finalize()),
            Hasher::Sha1(h) => hex(&h.finalize()),
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

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
    fn parses_each_algorithm_and_normalises_case() {
        let c: Checksum = "SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08".parse().unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.to_string(), "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert!("md5:098f6bcd4621d373cade4e832627b4f6".parse::<Checksum>().is_ok());
        assert!("sha1:a94a8fe5ccb19ba61c4c0873d391e987982fbbd3".parse::<Checksum>().is_ok());
    }

    #[test]
    fn refuses_bad_shapes_with_specific_errors() {
        assert!(matches!("abc".parse::<Checksum>(), Err(ChecksumParseError::Shape(_))));
        assert!(matches!("crc32:00".parse::<Checksum>(), Err(ChecksumParseError::Algorithm(_))));
        assert!(matches!("md5:xyz".parse::<Checksum>(), Err(ChecksumParseError::Digits { .. })));
        assert!(matches!("md5:098f6bcd".parse::<Checksum>(), Err(ChecksumParseError::Digits { .. })));
    }

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
