//! Bytes pushed to the mover by an `Upload` call, read by the import as any one-pass stream.
//!
//! The gRPC handler (an async task) sends [`Chunk`]s into a small bounded channel; the import
//! (a blocking thread) pulls them through [`Read`]. The channel's bound is the backpressure:
//! the uploader is slowed to the speed the target takes the bytes.
//!
//! The stream only ends cleanly at an [`Chunk::End`] whose length agrees with the bytes
//! received (and with the announced Content-Length): anything else reads as an error, so the
//! import aborts its target instead of committing a cut-off image. Formats that stop reading
//! before the stream's end (a qcow2 whose last cluster came early) are held to the same rule
//! by the end check [`open`] attaches to the source.

use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Opened, SourceError};

/// How uploads are named in messages and task listings.
pub const NAME: &str = "upload";

/// What the Upload call hands the import.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The uploader's end, with the length it says it sent.
    End {
        length: u64,
    },
    /// The uploader's stream broke (why, as gRPC said it).
    Cut(String),
}

/// Why an upload's bytes cannot be committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UploadError {
    #[error("the upload stopped after {received} bytes without its end: {why}")]
    Cut { received: u64, why: String },
    #[error("the upload's end says {claimed} bytes were sent, but {received} arrived")]
    LengthMismatch { claimed: u64, received: u64 },
    #[error("the uploader announced {announced} bytes (Content-Length) but sent {received}")]
    ContentLength { announced: u64, received: u64 },
}

impl UploadError {
    /// A cut stream is the transport's fault, worth another attempt; a length that disagrees
    /// is the uploader's.
    pub fn is_retryable(&self) -> bool {
        matches!(self, UploadError::Cut { .. })
    }
}

/// The receiving end of one upload attempt.
struct Feed {
    rx: mpsc::Receiver<Chunk>,
    content_length: Option<u64>,
    received: u64,
    current: Bytes,
    pos: usize,
    ended: bool,
    failed: Option<UploadError>,
}

impl Feed {
    /// The next bytes, `None` at a clean end.
    fn fill(&mut self) -> Result<bool, UploadError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while self.pos >= self.current.len() && !self.ended {
            let next = self.rx.blocking_recv();
            if let Err(e) = self.take(next) {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(!self.ended || self.pos < self.current.len())
    }

    fn take(&mut self, next: Option<Chunk>) -> Result<(), UploadError> {
        let received = self.received;
        match next {
            None => Err(UploadError::Cut { received, why: "the stream closed without an end message".into() }),
            Some(Chunk::Cut(why)) => Err(UploadError::Cut { received, why }),
            Some(Chunk::Data(bytes)) => {
                self.received += bytes.len() as u64;
                if let Some(announced) = self.content_length
                    && self.received > announced
                {
                    return Err(UploadError::ContentLength { announced, received: self.received });
                }
                self.current = bytes;
                self.pos = 0;
                Ok(())
            }
            Some(Chunk::End { length }) => {
                if length != received {
                    return Err(UploadError::LengthMismatch { claimed: length, received });
                }
                if let Some(announced) = self.content_length
                    && announced != received
                {
                    return Err(UploadError::ContentLength { announced, received });
                }
                self.ended = true;
                Ok(())
            }
        }
    }

    /// Reads (and drops) whatever follows the image up to the end, and checks the end.
    fn finish(&mut self) -> Result<(), UploadError> {
        while self.fill()? {
            self.pos = self.current.len();
        }
        Ok(())
    }
}

/// One attempt's bytes, as an import source: taken once by [`open`].
#[derive(Clone, Default)]
pub struct UploadFeed(Arc<Mutex<Option<Feed>>>);

impl fmt::Debug for UploadFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UploadFeed")
    }
}

impl UploadFeed {
    /// Bytes from `rx`; `content_length` is what the uploader announced, if anything.
    pub fn new(rx: mpsc::Receiver<Chunk>, content_length: Option<u64>) -> UploadFeed {
        let feed = Feed { rx, content_length, received: 0, current: Bytes::new(), pos: 0, ended: false, failed: None };
        UploadFeed(Arc::new(Mutex::new(Some(feed))))
    }

    /// A feed without bytes: the placeholder of an upload task between attempts.
    pub fn waiting() -> UploadFeed {
        UploadFeed::default()
    }
}

/// The reader the import pulls from; shares its feed with the end check.
struct FeedReader(Arc<Mutex<Feed>>);

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut feed = self.0.lock().expect("upload feed lock");
        if !feed.fill().map_err(|e| SourceError::Upload(e).into_io())? {
            return Ok(0);
        }
        let n = buf.len().min(feed.current.len() - feed.pos);
        buf[..n].copy_from_slice(&feed.current[feed.pos..feed.pos + n]);
        feed.pos += n;
        Ok(n)
    }
}

/// Opens an attempt's bytes (once): a one-pass stream of the announced length, whose end
/// must be confirmed before the import commits.
pub fn open(feed: &UploadFeed) -> Result<Opened, SourceError> {
    let taken = feed.0.lock().expect("upload feed lock").take();
    let feed =
        taken.ok_or_else(|| UploadError::Cut { received: 0, why: "no upload is attached to the task".into() })?;
    let len = feed.content_length;
    let shared = Arc::new(Mutex::new(feed));
    let check = shared.clone();
    Ok(Opened::new(NAME.to_string(), len, None, move || Ok(Box::new(FeedReader(shared)) as Box<dyn Read + Send>))
        .with_end_check(move || check.lock().expect("upload feed lock").finish().map_err(SourceError::Upload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: Vec<Chunk>, content_length: Option<u64>) -> Opened {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(c).unwrap();
        }
        drop(tx);
        open(&UploadFeed::new(rx, content_length)).unwrap()
    }

    fn read_all(opened: Opened) -> Result<Vec<u8>, UploadError> {
        let mut out = Vec::new();
        opened.into_stream().unwrap().read_to_end(&mut out).map_err(|e| match SourceError::from_io(e) {
            Ok(SourceError::Upload(u)) => u,
            other => panic!("not an upload error: {other:?}"),
        })?;
        Ok(out)
    }

    #[test]
    fn bytes_end_cleanly_only_at_an_agreeing_end() {
        let data = |b: &[u8]| Chunk::Data(b.to_vec().into());
        let ok = feed(vec![data(b"ab"), data(b""), data(b"cde"), Chunk::End { length: 5 }], Some(5));
        assert_eq!(read_all(ok).unwrap(), b"abcde");
        let no_end = feed(vec![data(b"ab")], None);
        assert!(matches!(read_all(no_end), Err(UploadError::Cut { received: 2, .. })));
        let cut = feed(vec![data(b"ab"), Chunk::Cut("reset".into())], None);
        assert!(matches!(read_all(cut), Err(UploadError::Cut { why, .. }) if why == "reset"));
        let wrong_end = feed(vec![data(b"ab"), Chunk::End { length: 3 }], None);
        assert!(matches!(read_all(wrong_end), Err(UploadError::LengthMismatch { claimed: 3, received: 2 })));
        let short = feed(vec![data(b"ab"), Chunk::End { length: 2 }], Some(4));
        assert!(matches!(read_all(short), Err(UploadError::ContentLength { announced: 4, received: 2 })));
        let long = feed(vec![data(b"abcde")], Some(4));
        assert!(matches!(read_all(long), Err(UploadError::ContentLength { announced: 4, received: 5 })));
    }

    #[test]
    fn the_end_check_drains_what_the_image_did_not_need() {
        let mut opened =
            feed(vec![Chunk::Data(Bytes::from_static(b"head")), Chunk::Data(Bytes::from_static(b"tail"))], None);
        let check = opened.take_end_check().unwrap();
        let mut head = [0u8; 4];
        opened.into_stream().unwrap().read_exact(&mut head).unwrap();
        assert!(matches!(check(), Err(SourceError::Upload(UploadError::Cut { received: 8, .. }))));

        let mut opened = feed(vec![Chunk::Data(Bytes::from_static(b"head")), Chunk::End { length: 4 }], None);
        let check = opened.take_end_check().unwrap();
        let mut head = [0u8; 2];
        opened.into_stream().unwrap().read_exact(&mut head).unwrap();
        check().unwrap();
    }
}
