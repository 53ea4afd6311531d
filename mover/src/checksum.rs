//! Source checksums (`md5|sha1|sha256|sha512:HEX`), computed over the bytes as fetched,
//! before any decompression, as CDI's `checksum` field defines them. The spec and the
//! hashers are `cdi-common`'s (the populator validates the same specs); the reader is ours.

use std::io::{self, Read};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// Bytes gathered before they are handed to the hashing thread, and batches in flight: the
/// bound on what a [`BackgroundHasher`] holds (4 MiB at most; the thread usually keeps up).
const BATCH: usize = 512 << 10;
const BATCHES_IN_FLIGHT: usize = 8;

/// A [`Hasher`] on a thread of its own. `update` costs the caller a copy of the bytes, not
/// their digest: SHA-256 runs at a fraction of memory speed, and a stream read by a thread
/// that also decompresses it (a registry layer) goes that much faster.
#[derive(Debug)]
pub struct BackgroundHasher {
    pending: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
    thread: JoinHandle<Hasher>,
}

impl BackgroundHasher {
    /// # Errors
    /// The thread could not be started.
    pub fn start(mut hasher: Hasher) -> io::Result<BackgroundHasher> {
        let (tx, rx) = sync_channel::<Vec<u8>>(BATCHES_IN_FLIGHT);
        let thread = std::thread::Builder::new().name("cdi-digest".into()).spawn(move || {
            for batch in rx {
                hasher.update(&batch);
            }
            hasher
        })?;
        Ok(BackgroundHasher { pending: Vec::with_capacity(BATCH), tx, thread })
    }

    pub fn update(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= BATCH {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        // Fails only if the thread panicked, which finish_hex reports.
        let _ = self.tx.send(batch);
    }

    /// The digest of everything given to `update`, once the thread has hashed it all.
    ///
    /// # Errors
    /// The hashing thread panicked.
    pub fn finish_hex(mut self) -> io::Result<String> {
        self.hand_over();
        let BackgroundHasher { tx, thread, .. } = self;
        // The thread's loop ends with the sender.
        drop(tx);
        let hasher = thread.join().map_err(|_| io::Error::other("the digest thread panicked"))?;
        Ok(hasher.finish_hex())
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

    #[test]
    fn the_background_hasher_digests_the_same_bytes_in_any_pieces() {
        // Pieces smaller and larger than a batch, so both the gathering and the hand-over
        // paths run; the reference digest is the plain hasher's.
        let data: Vec<u8> = (0..(3 * BATCH + 12_345)).map(|i| (i * 31 % 251) as u8).collect();
        let mut plain = Algorithm::Sha256.hasher();
        plain.update(&data);
        let mut background = BackgroundHasher::start(Algorithm::Sha256.hasher()).unwrap();
        let mut rest = &data[..];
        for size in [1usize, 7, 4096, BATCH + 3, 2 * BATCH].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            background.update(piece);
            rest = tail;
        }
        assert_eq!(background.finish_hex().unwrap(), plain.finish_hex());
        let empty = BackgroundHasher::start(Algorithm::Sha256.hasher()).unwrap();
        assert_eq!(empty.finish_hex().unwrap(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
