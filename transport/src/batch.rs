//! The payload of a raft frame: messages back to back, each `[len u32][codec bytes]`, the
//! codec bytes being [`codec::encode_envelope_into`]'s layout.
//!
//! Each message is encoded on its own (through the codec) behind a hand-written length, so
//! a sender can stop a frame at any message when it reaches its size target, and a message
//! too big for any frame is dropped alone instead of failing the batch.

use crate::error::FrameError;
use crate::frame::FrameWriter;
use flotilla_common::{codec, RaftEnvelope};

/// Bytes of the length prefix in front of each message.
pub const MESSAGE_LEN_BYTES: usize = 4;

/// Appends `envelope` to the open frame of `writer`. Returns the bytes appended.
pub fn push_envelope(
    writer: &mut FrameWriter,
    envelope: &RaftEnvelope,
) -> Result<usize, FrameError> {
    let before = writer.payload_bytes();
    let buf = writer.payload_buf();
    let len_at = buf.len();
    buf.extend_from_slice(&[0; MESSAGE_LEN_BYTES]);
    match codec::encode_envelope_into(envelope, buf) {
        Ok(n) => {
            // A message over u32::MAX bytes is over every frame bound; the caller drops it.
            let n32 = u32::try_from(n).unwrap_or(u32::MAX);
            buf[len_at..len_at + MESSAGE_LEN_BYTES].copy_from_slice(&n32.to_le_bytes());
            Ok(n + MESSAGE_LEN_BYTES)
        }
        Err(e) => {
            writer.truncate_payload(before);
            Err(e.into())
        }
    }
}

/// Decodes every message of a raft frame's payload into `out` (appending). On error `out`
/// may hold the messages before the bad one; the caller discards the whole frame.
pub fn decode_batch(payload: &[u8], out: &mut Vec<RaftEnvelope>) -> Result<(), FrameError> {
    let mut rest = payload;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<MESSAGE_LEN_BYTES>() else {
            return Err(FrameError::BadMessageLength {
                len: MESSAGE_LEN_BYTES,
                left: rest.len(),
            });
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some(bytes) = tail.get(..len) else {
            return Err(FrameError::BadMessageLength {
                len,
                left: tail.len(),
            });
        };
        out.push(codec::decode_envelope(bytes)?);
        rest = &tail[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, Decoded};
    use flotilla_common::{Entry, EntryKind, Message, MessageKind};

    fn envelope(i: u64) -> RaftEnvelope {
        let mut m = Message::new(MessageKind::Append, 1, 2, 3);
        m.index = i;
        m.entries = vec![Entry::new(EntryKind::Normal, 3, i + 1, vec![i as u8; 16])];
        RaftEnvelope::new(i % 7, 1, 2, m)
    }

    #[test]
    fn batch_round_trip() {
        let mut w = FrameWriter::new();
        w.begin();
        for i in 0..100 {
            push_envelope(&mut w, &envelope(i)).unwrap();
        }
        w.finish();
        let Decoded::Frame { payload, .. } = decode_frame(w.bytes(), 1 << 20).unwrap() else {
            panic!("incomplete");
        };
        let mut out = Vec::new();
        decode_batch(payload, &mut out).unwrap();
        assert_eq!(out, (0..100).map(envelope).collect::<Vec<_>>());
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut out = Vec::new();
        assert!(decode_batch(&[1, 0], &mut out).is_err());
        assert!(decode_batch(&[200, 0, 0, 0, 1, 2], &mut out).is_err());
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
        // A zero-length message is not a valid envelope.
        assert!(decode_batch(&[0, 0, 0, 0], &mut out).is_err());
        assert!(out.is_empty());
    }
}
