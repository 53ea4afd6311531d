//! Block-parallel xz decoding for random-access sources.
//!
//! A multi-block `.xz` (what `xz -T` writes) lists every block in its index at the end of
//! the file: where each starts, how long it is compressed and uncompressed. With random
//! access, each block is decoded on its own worker and its output written straight to its
//! place on the target, so the slowest decoder of the set scales with the cores.
//!
//! Each block is decoded as a one-block stream of its own: the original stream header, the
//! block's bytes, and an index and footer made for it. liblzma then checks the block's
//! sizes and integrity check as it would in the whole file, and no raw block API (nor
//! `unsafe`) is needed.

use crate::error::ImportError;
use crate::source::RandomAccess;

const HEADER_MAGIC: &[u8; 6] = b"\xfd7zXZ\x00";
const FOOTER_MAGIC: &[u8; 2] = b"YZ";
/// Stream header and footer sizes.
const HEADER_LEN: u64 = 12;
const FOOTER_LEN: u64 = 12;
/// An index larger than this is not worth parallel decoding (or is hostile).
const MAX_INDEX: u64 = 16 << 20;
/// Compressed bytes read per request while decoding a block.
const READ_PIECE: usize = 1 << 20;

/// Receives decoded bytes with their offset in the uncompressed stream.
pub type OutputSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), ImportError> + 'a;

/// One block: where its bytes are and what it decodes to.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// Offset of the block header in the file.
    pub offset: u64,
    /// Header + compressed data + check, without the padding to 4 bytes.
    pub unpadded: u64,
    /// Where its output starts in the uncompressed stream.
    pub out_offset: u64,
    pub out_len: u64,
}

impl Block {
    /// Bytes the block occupies in the file (padded to a multiple of 4).
    pub fn total(&self) -> u64 {
        self.unpadded.next_multiple_of(4)
    }
}

/// The block layout of a single-stream `.xz` file.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The stream header, copied into each block's one-block stream.
    header: [u8; HEADER_LEN as usize],
    pub blocks: Vec<Block>,
    /// Total uncompressed size.
    pub out_len: u64,
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

/// Reads an xz multibyte integer at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Layout {
    /// Reads the index of `src`. `None` when the file is not a plain single-stream xz with
    /// a consistent index (concatenated streams, stream padding, anything odd): the caller
    /// then decodes it in one pass, which reports real errors properly.
    pub fn read(src: &dyn RandomAccess) -> Result<Option<Layout>, ImportError> {
        let len = src.len();
        if len < HEADER_LEN + FOOTER_LEN + 8 {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        src.read_exact_at(&mut header, 0)?;
        let mut footer = [0u8; FOOTER_LEN as usize];
        src.read_exact_at(&mut footer, len - FOOTER_LEN)?;
        if &header[..6] != HEADER_MAGIC || &footer[10..] != FOOTER_MAGIC || header[6..8] != footer[8..10] {
            return Ok(None);
        }
        let backward = u32::from_le_bytes(footer[4..8].try_into().expect("4 bytes"));
        let index_len = (u64::from(backward) + 1) * 4;
        if index_len > MAX_INDEX || index_len + HEADER_LEN + FOOTER_LEN > len {
            return Ok(None);
        }
        let index_start = len - FOOTER_LEN - index_len;
        let mut index = vec![0u8; index_len as usize];
        src.read_exact_at(&mut index, index_start)?;
        let body = &index[..index.len() - 4];
        // The smallest index (backward size 0) is its CRC alone: no indicator byte.
        if crc32(body) != u32::from_le_bytes(index[index.len() - 4..].try_into().expect("4 bytes"))
            || body.first() != Some(&0)
        {
            return Ok(None);
        }
        let mut at = 1;
        let Some(count) = varint(body, &mut at) else { return Ok(None) };
        if count > index_len / 2 {
            return Ok(None);
        }
        let mut blocks = Vec::with_capacity(count as usize);
        let (mut offset, mut out_offset) = (HEADER_LEN, 0u64);
        for _ in 0..count {
            let (Some(unpadded), Some(out_len)) = (varint(body, &mut at), varint(body, &mut at)) else {
                return Ok(None);
            };
            let block = Block { offset, unpadded, out_offset, out_len };
            offset = match offset.checked_add(block.total()) {
                Some(o) => o,
                None => return Ok(None),
            };
            out_offset = match out_offset.checked_add(out_len) {
                Some(o) => o,
                None => return Ok(None),
            };
            blocks.push(block);
        }
        // The blocks must tile the file exactly between the header and the index.
        if offset != index_start || body[at..].iter().any(|&b| b != 0) {
            return Ok(None);
        }
        Ok(Some(Layout { header, blocks, out_len: out_offset }))
    }

    /// The index and footer of a one-block stream holding `block`.
    fn tail_for(&self, block: &Block) -> Vec<u8> {
        let mut index = vec![0u8];
        push_varint(&mut index, 1);
        push_varint(&mut index, block.unpadded);
        push_varint(&mut index, block.out_len);
        while index.len() % 4 != 0 {
            index.push(0);
        }
        let crc = crc32(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        let backward = (index.len() / 4 - 1) as u32;
        let mut footer = Vec::with_capacity(12);
        footer.extend_from_slice(&backward.to_le_bytes());
        footer.extend_from_slice(&self.header[6..8]);
        let crc = crc32(&footer);
        index.extend_from_slice(&crc.to_le_bytes());
        index.extend_from_slice(&footer);
        index.extend_from_slice(FOOTER_MAGIC);
        index
    }

    /// Decodes block `i`, handing its output to `sink` in pieces of at most `out.len()`
    /// bytes, with their offset in the uncompressed stream. Stops early once `limit` bytes
    /// were produced (for sniffing). `input` is scratch space for compressed bytes.
    pub fn decode(
        &self,
        src: &dyn RandomAccess,
        i: usize,
        input: &mut [u8],
        out: &mut [u8],
        limit: Option<u64>,
        sink: &mut OutputSink<'_>,
    ) -> Result<u64, ImportError> {
        use liblzma::stream::{Action, Status, Stream};
        let block = self.blocks[i];
        let corrupt = |message: String| crate::decompress::DecompressError::Corrupt {
            layer: "xz",
            compressed_offset: block.offset,
            message,
        };
        let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| corrupt(e.to_string()))?;
        let tail = self.tail_for(&block);
        let piece = input.len().min(READ_PIECE);
        let (mut read, mut produced, mut filled) = (0u64, 0u64, 0usize);
        // Fed in three phases: the stream header, the block's bytes piece by piece, the tail.
        let mut phase = 0;
        loop {
            let chunk: &[u8] = match phase {
                0 => &self.header,
                1 if read < block.total() => {
                    let n = (piece as u64).min(block.total() - read) as usize;
                    src.read_exact_at(&mut input[..n], block.offset + read)?;
                    read += n as u64;
                    &input[..n]
                }
                1 => {
                    phase = 2;
                    continue;
                }
                2 => &tail,
                _ => return Err(corrupt("the block ends before its data does".into()).into()),
            };
            let mut consumed = 0;
            loop {
                let (before_in, before_out) = (stream.total_in(), stream.total_out());
                let status = stream
                    .process(&chunk[consumed..], &mut out[filled..], Action::Run)
                    .map_err(|e| corrupt(e.to_string()))?;
                consumed += (stream.total_in() - before_in) as usize;
                filled += (stream.total_out() - before_out) as usize;
                let ended = matches!(status, Status::StreamEnd);
                if filled == out.len() || (ended && filled > 0) {
                    sink(block.out_offset + produced, &out[..filled])?;
                    produced += filled as u64;
                    filled = 0;
                    if limit.is_some_and(|l| produced >= l) {
                        return Ok(produced);
                    }
                }
                if ended {
                    if produced != block.out_len {
                        return Err(corrupt(format!(
                            "the block decoded to {produced} bytes, its index says {}",
                            block.out_len
                        ))
                        .into());
                    }
                    return Ok(produced);
                }
                if consumed == chunk.len() && stream.total_out() == before_out {
                    break; // this input is used up
                }
            }
            if phase != 1 {
                phase += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::source::MemSource;

    fn multi_block(data: &[u8], block: u64) -> Vec<u8> {
        let mut builder = liblzma::stream::MtStreamBuilder::new();
        builder.threads(2).block_size(block).preset(1);
        let stream = builder.encoder().unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn decodes_every_block_on_its_own() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let xz = multi_block(&data, 400_000);
        let src: Arc<dyn RandomAccess> = Arc::new(MemSource(Arc::new(xz)));
        let layout = Layout::read(src.as_ref()).unwrap().expect("a layout");
        assert!(layout.blocks.len() >= 7);
        assert_eq!(layout.out_len, data.len() as u64);
        let mut out = vec![0u8; data.len()];
        let (mut input, mut buf) = (vec![0u8; 1 << 16], vec![0u8; 100_000]);
        for i in (0..layout.blocks.len()).rev() {
            layout
                .decode(src.as_ref(), i, &mut input, &mut buf, None, &mut |at, bytes| {
                    out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(out, data);
    }

    #[test]
    fn corrupt_blocks_and_odd_files_are_not_trusted() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 13) as u8).collect();
        let mut xz = multi_block(&data, 300_000);
        // Concatenated streams: not a single-stream layout, left to the one-pass decoder.
        let mut two = xz.clone();
        two.extend_from_slice(&xz);
        assert!(Layout::read(&MemSource(Arc::new(two))).unwrap().is_none());
        // A damaged block fails its own decode with an xz error.
        let layout = Layout::read(&MemSource(Arc::new(xz.clone()))).unwrap().unwrap();
        let b = layout.blocks[1];
        xz[(b.offset + 40) as usize] ^= 0xff;
        let src = MemSource(Arc::new(xz));
        let (mut input, mut buf) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let err = layout.decode(&src, 1, &mut input, &mut buf, None, &mut |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("xz"), "{err}");
    }
}
