//! The `Upload` call's request stream on the wire, written and read without copying its data.
//!
//! tonic copies every message it sends into its encode buffer and every message it receives
//! into its decode buffer. For an upload that is two copies of the whole image, one in the
//! proxy and one in the mover, on top of the TLS layers' own. Here a data message goes out as
//! a few header bytes followed by the body chunk itself, and comes in as slices of the
//! HTTP/2 frames it arrived in. The bytes on the wire are the same gRPC messages (no
//! compression), so either end may still be plain tonic.

use prost::Message as _;
use prost::bytes::{Buf, BufMut as _, Bytes, BytesMut};
use tonic::Status;

use crate::v1::{UploadRequest, upload_request};

/// The call's path: its requests go this way, whatever made them.
pub const PATH: &str = "/cdi.mover.v1.Mover/Upload";
/// The largest message taken, as tonic's default decoding limit.
pub const MAX_MESSAGE: usize = 4 << 20;
/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// `UploadRequest.data`: field 2, length-delimited.
const DATA_TAG: u8 = 2 << 3 | 2;
/// The tag and the longest length varint in front of a data message's bytes.
const DATA_HEAD_MAX: usize = 1 + 10;
/// Messages shorter than this are assembled whole (start, end, small data): copying them
/// costs nothing worth avoiding.
const ASSEMBLE_BELOW: usize = 64 * 1024;

/// The gRPC frame of a data message up to its bytes: send `data` right after it.
pub fn data_header(data_len: usize) -> Bytes {
    let body = 1 + prost::encoding::encoded_len_varint(data_len as u64) + data_len;
    let mut head = BytesMut::with_capacity(PREFIX + DATA_HEAD_MAX);
    put_prefix(&mut head, body);
    head.put_u8(DATA_TAG);
    prost::encoding::encode_varint(data_len as u64, &mut head);
    head.freeze()
}

/// The whole gRPC frame of `message` (for start and end; data goes with [`data_header`]).
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut out, len);
    // Cannot fail: the buffer has room for the whole message.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// Writes a message's prefix: not compressed, `len` bytes.
fn put_prefix(out: &mut BytesMut, len: usize) {
    out.put_u8(0);
    out.put_u32(len as u32);
}

/// Reads a message's prefix (at least [`PREFIX`] bytes): its length.
fn take_prefix(bytes: &mut impl Buf) -> Result<usize, Status> {
    if bytes.get_u8() != 0 {
        // Nothing offers compression on this call, so nothing may use it.
        return Err(Status::unimplemented("compressed messages are not accepted"));
    }
    Ok(bytes.get_u32() as usize)
}

/// Reads one message of type `M` from a response body's bytes (a unary answer).
///
/// # Errors
/// A compressed, truncated, oversized or undecodable message, or no message at all.
pub fn read_one<M: prost::Message + Default>(mut body: Bytes) -> Result<M, Status> {
    if body.len() < PREFIX {
        return Err(Status::internal("the answer has no message"));
    }
    let len = take_prefix(&mut body)?;
    if len != body.len() {
        return Err(Status::internal(format!("the answer's message says {len} bytes but {} came", body.len())));
    }
    M::decode(body).map_err(|e| Status::internal(format!("the answer does not decode: {e}")))
}

/// A piece of the request stream, in order.
#[derive(Debug, PartialEq)]
pub enum Piece {
    /// A whole message (start, end, a small data message, or anything unusual).
    Message(UploadRequest),
    /// Some of a large data message's bytes, as they arrived.
    Data(Bytes),
}

impl Piece {
    /// As a message of the stream: a slice of data is a data message of its own, which is
    /// what the receiver makes of it anyway (the bytes matter, not how they were cut).
    pub fn into_request(self) -> UploadRequest {
        match self {
            Piece::Message(m) => m,
            Piece::Data(d) => UploadRequest { request: Some(upload_request::Request::Data(d)) },
        }
    }
}

/// Splits a request body's frames into [`Piece`]s.
#[derive(Debug, Default)]
pub struct Decoder {
    /// A prefix, a data message's head, or a whole small message being gathered.
    head: BytesMut,
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// Gathering a message's prefix.
    #[default]
    Prefix,
    /// Gathering the start of a large message of this length, to see whether it is data.
    Peek(usize),
    /// Gathering a whole message of this length.
    Whole(usize),
    /// Passing on this many more bytes of a data message.
    Data(usize),
}

impl Decoder {
    /// Takes the next frame of the body; appends what it completes to `out`.
    ///
    /// # Errors
    /// A compressed or oversized message, or one that does not decode. The stream is
    /// unusable from then on.
    pub fn feed(&mut self, mut chunk: Bytes, out: &mut impl Extend<Piece>) -> Result<(), Status> {
        loop {
            match self.state {
                State::Data(left) => {
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    let n = left.min(chunk.len());
                    out.extend([Piece::Data(chunk.split_to(n))]);
                    self.state = if n == left { State::Prefix } else { State::Data(left - n) };
                }
                State::Prefix => {
                    if !self.gather(&mut chunk, PREFIX) {
                        return Ok(());
                    }
                    let len = take_prefix(&mut self.head.split())?;
                    if len > MAX_MESSAGE {
                        return Err(Status::out_of_range(format!(
                            "a message of {len} bytes; the limit is {MAX_MESSAGE} bytes"
                        )));
                    }
                    self.state = if len < ASSEMBLE_BELOW { State::Whole(len) } else { State::Peek(len) };
                }
                State::Peek(len) => {
                    // A byte at a time: the head ends where its length varint does.
                    match data_head(&self.head, len) {
                        Peeked::More if chunk.is_empty() => return Ok(()),
                        Peeked::More => self.head.extend_from_slice(&chunk.split_to(1)),
                        Peeked::Data(data_len) => {
                            self.head.clear();
                            self.state = State::Data(data_len);
                        }
                        Peeked::Other => self.state = State::Whole(len),
                    }
                }
                State::Whole(len) => {
                    if !self.gather(&mut chunk, len) {
                        return Ok(());
                    }
                    let message = UploadRequest::decode(self.head.split().freeze())
                        .map_err(|e| Status::invalid_argument(format!("a message does not decode: {e}")))?;
                    out.extend([Piece::Message(message)]);
                    self.state = State::Prefix;
                }
            }
        }
    }

    /// The body ended: fine between messages, not inside one.
    ///
    /// # Errors
    /// The body ended inside a message.
    pub fn finish(&self) -> Result<(), Status> {
        if self.state == State::Prefix && self.head.is_empty() {
            Ok(())
        } else {
            Err(Status::cancelled("the stream ended inside a message"))
        }
    }

    /// Moves bytes from `chunk` into `head` until it holds `want`; whether it does.
    fn gather(&mut self, chunk: &mut Bytes, want: usize) -> bool {
        let n = want.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk.split_to(n));
        self.head.len() >= want
    }
}

/// What the start of a large message says it is.
#[derive(Debug, PartialEq)]
enum Peeked {
    /// Not enough bytes yet.
    More,
    /// A data message and nothing else, with this many bytes of data after its head.
    Data(usize),
    /// Something else: decoded whole.
    Other,
}

/// Looks at the first bytes of a message of `len` bytes.
fn data_head(head: &[u8], len: usize) -> Peeked {
    let Some((&tag, varint)) = head.split_first() else {
        return Peeked::More;
    };
    if tag != DATA_TAG {
        return Peeked::Other;
    }
    let Some(last) = varint.iter().position(|b| b & 0x80 == 0) else {
        return if varint.len() < DATA_HEAD_MAX - 1 { Peeked::More } else { Peeked::Other };
    };
    let head_len = 1 + last + 1;
    match prost::encoding::decode_varint(&mut &varint[..=last]) {
        // No other field before or after the bytes.
        Ok(data_len) if (head_len as u64).checked_add(data_len) == Some(len as u64) => Peeked::Data(data_len as usize),
        _ => Peeked::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{UploadEnd, UploadStart};

    fn start() -> UploadRequest {
        UploadRequest {
            request: Some(upload_request::Request::Start(UploadStart { task_id: "task-1".into(), content_length: 7 })),
        }
    }

    fn data(bytes: Vec<u8>) -> UploadRequest {
        UploadRequest { request: Some(upload_request::Request::Data(bytes.into())) }
    }

    fn end(length: u64) -> UploadRequest {
        UploadRequest { request: Some(upload_request::Request::End(UploadEnd { length })) }
    }

    /// The stream as prost would frame it, message by message.
    fn prost_frames(messages: &[UploadRequest]) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in messages {
            let body = m.encode_to_vec();
            wire.push(0);
            wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
            wire.extend_from_slice(&body);
        }
        wire
    }

    /// Feeds `wire` cut every `cut` bytes; the messages it makes of it, data pieces joined.
    fn decode(wire: &[u8], cut: usize) -> Result<(Vec<UploadRequest>, Vec<u8>), Status> {
        let mut decoder = Decoder::default();
        let mut pieces = Vec::new();
        for chunk in wire.chunks(cut) {
            decoder.feed(Bytes::copy_from_slice(chunk), &mut pieces)?;
        }
        decoder.finish()?;
        let (mut others, mut bytes) = (Vec::new(), Vec::new());
        for piece in pieces {
            match piece.into_request().request {
                Some(upload_request::Request::Data(d)) => bytes.extend_from_slice(&d),
                r => others.push(UploadRequest { request: r }),
            }
        }
        Ok((others, bytes))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_path_is_the_generated_services() {
        assert_eq!(PATH, format!("/{}/Upload", crate::v1::mover_server::SERVICE_NAME));
    }

    #[test]
    fn a_data_header_and_its_bytes_are_what_prost_writes_for_the_message() {
        for len in [0, 1, 127, 128, 300_000, 1 << 20] {
            let bytes = pattern(len);
            let mut ours = data_header(len).to_vec();
            ours.extend_from_slice(&bytes);
            assert_eq!(ours, prost_frames(&[data(bytes)]), "{len} bytes");
        }
        assert_eq!(frame(&end(9)).to_vec(), prost_frames(&[end(9)]));
    }

    #[test]
    fn any_cut_of_the_stream_gives_back_its_messages_and_bytes() {
        let big = pattern(300_001);
        let small = pattern(100);
        let wire = prost_frames(&[start(), data(big.clone()), data(small.clone()), data(big.clone()), end(7)]);
        let mut all = big.clone();
        all.extend_from_slice(&small);
        all.extend_from_slice(&big);
        for cut in [1, 2, 5, 6, 11, 16, 4096, 65_536, 300_006, wire.len()] {
            let (others, bytes) = decode(&wire, cut).unwrap();
            assert_eq!(others, vec![start(), end(7)], "cut every {cut}");
            assert!(bytes == all, "cut every {cut}: the data differs");
        }
    }

    #[test]
    fn large_data_comes_out_as_slices_of_the_frames_not_copies() {
        let big = Bytes::from(pattern(200_000));
        let mut decoder = Decoder::default();
        let mut pieces = Vec::new();
        decoder.feed(data_header(big.len()), &mut pieces).unwrap();
        decoder.feed(big.clone(), &mut pieces).unwrap();
        decoder.finish().unwrap();
        // The header's frame held no data; the data frame went out whole, as the same memory.
        let datas: Vec<_> = pieces.iter().filter_map(|p| if let Piece::Data(d) = p { Some(d) } else { None }).collect();
        let last = datas.last().unwrap();
        assert_eq!(last.as_ptr(), big.as_ptr());
        assert_eq!(datas.iter().map(|d| d.len()).sum::<usize>(), big.len());
    }

    #[test]
    fn a_large_message_that_is_not_plain_data_is_decoded_whole() {
        // Data, then a repeated oneof field: prost keeps the last, so must we.
        let mut body = data(pattern(70_000)).encode_to_vec();
        body.extend_from_slice(&end(3).encode_to_vec());
        let mut wire = vec![0];
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(&body);
        let (others, bytes) = decode(&wire, 1000).unwrap();
        assert_eq!(others, vec![end(3)]);
        assert!(bytes.is_empty());
    }

    #[test]
    fn compressed_oversized_and_cut_streams_are_refused() {
        let mut decoder = Decoder::default();
        let err = decoder.feed(Bytes::from_static(&[1, 0, 0, 0, 1, 0]), &mut Vec::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);

        let mut decoder = Decoder::default();
        let huge = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        let err = decoder.feed(Bytes::from(vec![0, huge[0], huge[1], huge[2], huge[3]]), &mut Vec::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");

        let wire = prost_frames(&[start(), data(pattern(100_000))]);
        for cut_at in [3, wire.len() - 1, wire.len() - 50_000] {
            let err = decode(&wire[..cut_at], 4096).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Cancelled, "cut at {cut_at}: {err}");
        }

        let err = decode(&[0, 0, 0, 0, 2, 0xff, 0xff], 7).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }

    #[test]
    fn a_unary_answer_reads_back() {
        let answer = end(42);
        assert_eq!(read_one::<UploadRequest>(frame(&answer)).unwrap(), answer);
        assert_eq!(read_one::<UploadRequest>(Bytes::new()).unwrap_err().code(), tonic::Code::Internal);
        let mut long = frame(&answer).to_vec();
        long.push(0);
        assert_eq!(read_one::<UploadRequest>(long.into()).unwrap_err().code(), tonic::Code::Internal);
    }
}
