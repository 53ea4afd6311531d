//! Outer compression layers: gzip (multi-member), xz (multi-stream, multi-block) and zstd
//! (multi-frame). Each decoder is wrapped so that its failures come out as a typed
//! [`DecompressError`] naming the layer, while transport errors from below pass through.

pub mod xz_blocks;

use std::io::{self, BufReader, Read};

use crate::detect::Compression;
use crate::source::SourceError;

/// Input buffering in front of each decoder.
const INPUT_BUF: usize = 256 << 10;

/// Why an outer compression layer could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error(
        "{layer} data ends early after {compressed_offset} compressed bytes: the file is truncated \
         or the download was cut short"
    )]
    Truncated { layer: &'static str, compressed_offset: u64 },
    #[error("{layer} data is corrupt near compressed byte {compressed_offset}: {message}")]
    Corrupt { layer: &'static str, compressed_offset: u64, message: String },
}

impl DecompressError {
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// Recovers a [`DecompressError`] carried inside an `io::Error`.
    pub fn from_io(e: io::Error) -> Result<DecompressError, io::Error> {
        if e.get_ref().is_some_and(|inner| inner.is::<DecompressError>()) {
            let inner = e.into_inner().expect("checked above");
            Ok(*inner.downcast::<DecompressError>().expect("checked above"))
        } else {
            Err(e)
        }
    }
}

fn layer_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Xz => "xz",
        Compression::Zstd => "zstd",
    }
}

/// Wraps `inner` in the decoder for `compression`.
pub fn decoder(compression: Compression, inner: Box<dyn Read + Send>) -> io::Result<Box<dyn Read + Send>> {
    let counted = Counted { inner, count: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)) };
    let count = counted.count.clone();
    let buffered = BufReader::with_capacity(INPUT_BUF, counted);
    let decoder: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, liblzma::stream::CONCATENATED)
                .map_err(io::Error::other)?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(buffered, stream))
        }
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    Ok(Box::new(Tagged { inner: decoder, layer: layer_name(compression), count, done: false }))
}

/// Counts compressed bytes consumed, so errors can say where.
struct Counted {
    inner: Box<dyn Read + Send>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Turns a decoder's own failures into [`DecompressError`]s.
struct Tagged {
    inner: Box<dyn Read + Send>,
    layer: &'static str,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    done: bool,
}

impl Read for Tagged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Ok(0) => {
                self.done = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                // Failures of the transport below pass through untouched.
                let e = match SourceError::from_io(e) {
                    Ok(source) => return Err(source.into_io()),
                    Err(e) => e,
                };
                let e = match DecompressError::from_io(e) {
                    Ok(inner) => return Err(inner.into_io()),
                    Err(e) => e,
                };
                let compressed_offset = self.count.load(std::sync::atomic::Ordering::Relaxed);
                let err = if e.kind() == io::ErrorKind::UnexpectedEof {
                    DecompressError::Truncated { layer: self.layer, compressed_offset }
                } else {
                    DecompressError::Corrupt { layer: self.layer, compressed_offset, message: e.to_string() }
                };
                Err(err.into_io())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    fn decode(c: Compression, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, Box::new(io::Cursor::new(data)))?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_reads_every_member() {
        let data = sample();
        let mut gz = Vec::new();
        for half in data.chunks(data.len() / 2 + 1) {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(half).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        assert_eq!(decode(Compression::Gzip, gz).unwrap(), data);
    }

    #[test]
    fn zstd_reads_every_frame_and_xz_every_stream() {
        let data = sample();
        let mut zst = zstd::encode_all(&data[..1000], 1).unwrap();
        zst.extend(zstd::encode_all(&data[1000..], 1).unwrap());
        assert_eq!(decode(Compression::Zstd, zst).unwrap(), data);

        let xz_of = |d: &[u8]| {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let mut xz = xz_of(&data[..5000]);
        xz.extend(xz_of(&data[5000..]));
        assert_eq!(decode(Compression::Xz, xz).unwrap(), data);
    }

    #[test]
    fn truncation_and_corruption_are_typed() {
        let data = sample();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let gz = enc.finish().unwrap();

        let err = decode(Compression::Gzip, gz[..gz.len() / 2].to_vec()).unwrap_err();
        assert!(matches!(DecompressError::from_io(err).unwrap(), DecompressError::Truncated { layer: "gzip", .. }));

        let mut bad = gz.clone();
        for b in &mut bad[20..200] {
            *b ^= 0x5a;
        }
        let err = decode(Compression::Gzip, bad).unwrap_err();
        assert!(DecompressError::from_io(err).is_ok());

        let zst = zstd::encode_all(&data[..], 1).unwrap();
        let err = decode(Compression::Zstd, zst[..zst.len() - 10].to_vec()).unwrap_err();
        assert!(DecompressError::from_io(err).is_ok());
    }
}
