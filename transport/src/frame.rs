//! The frame: `[magic u32][version u16][len u32][crc32c u32][payload]`, all little-endian
//! (like the codec's integers), the checksum taken over the payload.
//!
//! [`decode_frame`] is a pure function over a byte buffer, used by the socket readers, the
//! fuzz target and the garbage tests alike: the header is checked (magic, version, length
//! bound) as soon as its 14 bytes are there, before any payload is read or allocated.

use crate::error::FrameError;
use flotilla_common::codec;
use serde::{de::DeserializeOwned, Serialize};

/// First four bytes of every frame ("FLT1" read as little-endian bytes).
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"FLT1");
/// The protocol version this build speaks; a peer with another is refused.
///
/// 2: raft envelopes in the codec's own layout (`codec::encode_envelope_into`), not bincode.
/// 3: `MessageKind::Propose` (commands a follower forwards to its leader).
/// 4: `MessageKind::PeerRemoved` (a member tells a removed replica it is gone).
/// 5: `MessageKind::Node` (node-level messages of the cluster layer: gossip).
/// 6: `MessageKind::Commit` (a leader's commit index, unanswered).
pub const PROTOCOL_VERSION: u16 = 6;
/// Bytes before the payload.
pub const FRAME_HEADER_BYTES: usize = 14;

/// What [`decode_frame`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, checked frame.
    Frame {
        /// The payload (its checksum matched).
        payload: &'a [u8],
        /// Header plus payload: how far to advance the buffer.
        frame_bytes: usize,
    },
    /// More bytes are needed; `frame_bytes` is the whole frame's size once the header is
    /// readable (already checked against the bound).
    Incomplete {
        /// The full frame size, if the header has been read.
        frame_bytes: Option<usize>,
    },
}

/// Checks and splits off the first frame of `buf`, accepting payloads up to
/// `frame_bytes_max` bytes.
pub fn decode_frame(buf: &[u8], frame_bytes_max: usize) -> Result<Decoded<'_>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(Decoded::Incomplete { frame_bytes: None });
    };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let magic = word(0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::BadVersion(version));
    }
    let len = word(6) as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLong {
            len,
            max: frame_bytes_max,
        });
    }
    let frame_bytes = FRAME_HEADER_BYTES + len;
    let Some(payload) = buf.get(FRAME_HEADER_BYTES..frame_bytes) else {
        return Ok(Decoded::Incomplete {
            frame_bytes: Some(frame_bytes),
        });
    };
    let expected = word(10);
    let actual = crc32c::crc32c(payload);
    if expected != actual {
        return Err(FrameError::Checksum { expected, actual });
    }
    Ok(Decoded::Frame {
        payload,
        frame_bytes,
    })
}

/// Builds frames back to back in one buffer, so that many frames leave in one write.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    /// Where the open frame's header starts, if a frame is open.
    open_at: Option<usize>,
    /// Frames finished since the last `clear`.
    frames: u64,
}

impl FrameWriter {
    /// An empty writer.
    pub fn new() -> Self {
        FrameWriter::default()
    }

    /// Opens a frame: reserves its header. Panics if a frame is already open (a bug).
    pub fn begin(&mut self) {
        assert!(self.open_at.is_none(), "frame already open");
        self.open_at = Some(self.buf.len());
        self.buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    }

    /// Whether a frame is open.
    pub fn is_open(&self) -> bool {
        self.open_at.is_some()
    }

    /// Bytes buffered, the open frame included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Frames finished since the last [`FrameWriter::clear`].
    pub fn frame_count(&self) -> u64 {
        self.frames
    }

    /// The open frame's payload bytes so far (0 if none is open).
    pub fn payload_bytes(&self) -> usize {
        self.open_at
            .map_or(0, |at| self.buf.len() - at - FRAME_HEADER_BYTES)
    }

    /// The buffer the open frame's payload is appended to.
    pub fn payload_buf(&mut self) -> &mut Vec<u8> {
        debug_assert!(self.open_at.is_some(), "no frame open");
        &mut self.buf
    }

    /// Cuts the open frame's payload back to `payload_bytes` (undoes an append).
    pub fn truncate_payload(&mut self, payload_bytes: usize) {
        if let Some(at) = self.open_at {
            self.buf.truncate(at + FRAME_HEADER_BYTES + payload_bytes);
        }
    }

    /// Closes the open frame: fills in its length and checksum. An empty frame is removed.
    /// Returns the payload length written.
    pub fn finish(&mut self) -> usize {
        let Some(at) = self.open_at.take() else {
            return 0;
        };
        let payload_at = at + FRAME_HEADER_BYTES;
        let len = self.buf.len() - payload_at;
        if len == 0 {
            self.buf.truncate(at);
            return 0;
        }
        // The caller bounds payloads by frame_bytes_max, which validate() keeps within u32.
        let len32 = u32::try_from(len).expect("frame payload over u32::MAX");
        let crc = crc32c::crc32c(&self.buf[payload_at..]);
        let header = &mut self.buf[at..payload_at];
        header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        header[6..10].copy_from_slice(&len32.to_le_bytes());
        header[10..14].copy_from_slice(&crc.to_le_bytes());
        self.frames += 1;
        len
    }

    /// Writes `value` as one whole frame through the codec.
    pub fn push_value<T: Serialize>(&mut self, value: &T) -> Result<usize, FrameError> {
        self.begin();
        if let Err(e) = codec::encode_into(value, &mut self.buf) {
            self.truncate_payload(0);
            self.finish();
            return Err(e.into());
        }
        Ok(self.finish())
    }

    /// The finished frames.
    pub fn bytes(&self) -> &[u8] {
        debug_assert!(self.open_at.is_none(), "frame still open");
        &self.buf
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets every frame, keeping at most `retain_bytes` of the allocation (so a burst
    /// does not pin its peak memory forever).
    pub fn clear_retaining(&mut self, retain_bytes: usize) {
        self.clear();
        self.buf.shrink_to(retain_bytes);
    }

    /// Forgets every frame, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.open_at = None;
        self.frames = 0;
    }
}

/// Encodes `value` as a single frame in a new buffer.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut w = FrameWriter::new();
    w.push_value(value)?;
    Ok(w.buf)
}

/// Decodes a frame payload that holds one value.
pub fn decode_value<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_prefix_is_incomplete() {
        let frame = encode_frame(&(7u64, String::from("hello"))).unwrap();
        for cut in 0..frame.len() {
            assert!(
                matches!(
                    decode_frame(&frame[..cut], 1024),
                    Ok(Decoded::Incomplete { .. })
                ),
                "cut {cut}"
            );
        }
        let Decoded::Frame {
            payload,
            frame_bytes,
        } = decode_frame(&frame, 1024).unwrap()
        else {
            panic!("whole frame not decoded");
        };
        assert_eq!(frame_bytes, frame.len());
        let back: (u64, String) = decode_value(payload).unwrap();
        assert_eq!(back, (7, "hello".to_string()));
    }

    #[test]
    fn header_is_checked_before_payload_arrives() {
        let frame = encode_frame(&vec![0u8; 100]).unwrap();
        // Only the header: the length bound is already enforced.
        assert!(matches!(
            decode_frame(&frame[..FRAME_HEADER_BYTES], 50),
            Err(FrameError::TooLong { max: 50, .. })
        ));
        let mut bad = frame.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_frame(&bad[..FRAME_HEADER_BYTES], 1024),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = frame.clone();
        bad[4] = 9;
        assert!(matches!(
            decode_frame(&bad, 1024),
            Err(FrameError::BadVersion(9))
        ));
        let mut bad = frame.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        assert!(matches!(
            decode_frame(&bad, 1024),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn writer_packs_frames_back_to_back() {
        let mut w = FrameWriter::new();
        w.push_value(&1u32).unwrap();
        w.begin();
        assert_eq!(w.finish(), 0, "an empty frame is dropped");
        w.push_value(&2u32).unwrap();
        let mut rest = w.bytes();
        let mut seen = Vec::new();
        while let Decoded::Frame {
            payload,
            frame_bytes,
        } = decode_frame(rest, 64).unwrap()
        {
            seen.push(decode_value::<u32>(payload).unwrap());
            rest = &rest[frame_bytes..];
        }
        assert_eq!(seen, vec![1, 2]);
        assert!(rest.is_empty());
    }
}
