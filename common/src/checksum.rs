//! Checksum specs, `md5|sha1|sha256|sha512:HEX`, as CDI's `checksum` field takes them: over
//! the source bytes as fetched, before any decompression. The populator validates them; the
//! mover (feature `digest`) also computes them.

use std::fmt;
use std::str::FromStr;

/// A digest algorithm CDI accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// 32 hex digits.
    Md5,
    /// 40 hex digits.
    Sha1,
    /// 64 hex digits.
    Sha256,
    /// 128 hex digits.
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    /// Lower case, as in `md5:...`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// An expected digest. `Display` gives `algorithm:hex` in lower case, the form
/// `PopulateRequest.checksum` and `--checksum` take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// Lower-case hex of the algorithm's length.
    pub hex: String,
}

/// Why a checksum spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("expected \"algorithm:hex\", e.g. \"sha256:9f86d0...\"")]
    MissingColon,
    #[error("algorithm {0:?} is not one of md5, sha1, sha256, sha512")]
    UnknownAlgorithm(String),
    #[error("a {algorithm} digest has {expected} hex digits, not {found}")]
    WrongLength { algorithm: &'static str, expected: usize, found: usize },
    #[error("the digest is not hexadecimal")]
    NotHex,
}

impl FromStr for Checksum {
    type Err = ChecksumError;

    /// As CDI reads it: whitespace around either part is ignored, case does not matter.
    fn from_str(text: &str) -> Result<Checksum, ChecksumError> {
        let (algorithm, hex) = text.split_once(':').ok_or(ChecksumError::MissingColon)?;
        let name = algorithm.trim().to_ascii_lowercase();
        let algorithm =
            Algorithm::ALL.into_iter().find(|a| a.name() == name).ok_or(ChecksumError::UnknownAlgorithm(name))?;
        let hex = hex.trim().to_ascii_lowercase();
        // Digits first: a length count of non-ASCII text would mislead.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex);
        }
        if hex.len() != algorithm.hex_len() {
            return Err(ChecksumError::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                found: hex.len(),
            });
        }
        Ok(Checksum { algorithm, hex })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[cfg(feature = "digest")]
pub use digest::Hasher;

#[cfg(feature = "digest")]
mod digest {
    use std::fmt;

    use sha2::Digest as _;

    use super::Algorithm;

    /// A running digest of one of the algorithms.
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

    impl Algorithm {
        pub fn hasher(self) -> Hasher {
            match self {
                Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
                Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
                Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
                Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            }
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
            use super::to_hex as hex;
            match self {
                Hasher::Md5(h) => hex(&h.finalize()),
                Hasher::Sha1(h) => hex(&h.finalize()),
                Hasher::Sha256(h) => hex(&h.finalize()),
                Hasher::Sha512(h) => hex(&h.finalize()),
            }
        }
    }
}

/// Lower-case hex of `bytes`, as digests are written.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Checksum, ChecksumError> {
        text.parse()
    }

    #[test]
    fn each_algorithm_parses_and_case_and_spaces_do_not_matter() {
        let c = parse(" SHA1 : 2FD4E1C67A2D28FCED849EE1BB76E7391B93EB12 ").unwrap();
        assert_eq!(c, Checksum { algorithm: Algorithm::Sha1, hex: "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12".into() });
        assert_eq!(c.to_string(), "sha1:2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");
        for a in Algorithm::ALL {
            assert_eq!(parse(&format!("{}:{}", a.name(), "a".repeat(a.hex_len()))).unwrap().algorithm, a);
        }
    }

    #[test]
    fn each_refusal_says_what_is_wrong() {
        assert_eq!(parse("d41d8cd98f00b204e9800998ecf8427e"), Err(ChecksumError::MissingColon));
        assert_eq!(parse("crc32:deadbeef"), Err(ChecksumError::UnknownAlgorithm("crc32".into())));
        assert_eq!(
            parse("sha256:abcd"),
            Err(ChecksumError::WrongLength { algorithm: "sha256", expected: 64, found: 4 })
        );
        assert_eq!(parse(&format!("md5:{}", "g".repeat(32))), Err(ChecksumError::NotHex));
        assert_eq!(parse("md5:"), Err(ChecksumError::WrongLength { algorithm: "md5", expected: 32, found: 0 }));
    }

    #[cfg(feature = "digest")]
    #[test]
    fn hashers_digest_like_the_reference_values() {
        let digest = |a: Algorithm| {
            let mut h = a.hasher();
            h.update(b"te");
            h.update(b"st");
            h.finish_hex()
        };
        assert_eq!(digest(Algorithm::Md5), "098f6bcd4621d373cade4e832627b4f6");
        assert_eq!(digest(Algorithm::Sha1), "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3");
        assert_eq!(digest(Algorithm::Sha256), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(digest(Algorithm::Sha512).len(), 128);
    }
}
