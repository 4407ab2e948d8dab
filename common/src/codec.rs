//! The one place where values become bytes and back.
//!
//! Every encode/decode call in Flotilla goes through this module so that the wire and disk
//! format can be swapped in one place (bincode is pinned at 2.0.1 because its 3.0.0 release
//! is an empty tombstone). The format is bincode's standard configuration: little-endian,
//! variable-length integers.
//!
//! Decoding never panics on bad input: a truncated or malformed buffer is a
//! [`CodecError`], and buffers are bounded by [`DECODE_BYTES_MAX`] so a corrupt length
//! prefix cannot make the decoder allocate without limit.
//!
//! One type has a hand-written encoding next to bincode: [`RaftEnvelope`](crate::RaftEnvelope),
//! which the transport moves by the million ([`encode_envelope_into`], [`decode_envelope`];
//! layout and reasons in `codec/envelope.rs`). Everything else, and everything on disk,
//! is bincode.

mod envelope;

pub use envelope::{decode_envelope, encode_envelope_into, FORMAT_BINCODE, FORMAT_FIELDS};

use serde::{de::DeserializeOwned, Serialize};

/// The largest value [`decode`] accepts, in bytes. Bigger inputs come from corruption or a
/// hostile peer: region snapshots are streamed in chunks far below this.
pub const DECODE_BYTES_MAX: usize = 256 << 20;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be written.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The bytes hold a valid value followed by unread bytes.
    #[error("decode left {0} trailing bytes")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// Encodes `value` into a new buffer.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends the encoding of `value` to `buf`, returning the number of bytes written.
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<usize, CodecError> {
    let before = buf.len();
    bincode::serde::encode_into_std_write(value, buf, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(buf.len() - before)
}

/// Decodes a whole buffer into a `T`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, EntryKind, HardState, Message, MessageKind};

    #[test]
    fn entry_round_trip() {
        let e = Entry::new(EntryKind::Normal, 7, 42, b"hello".to_vec());
        let bytes = encode(&e).unwrap();
        let back: Entry = decode(&bytes).unwrap();
        assert_eq!(e, back);
    }

    #[test]
    fn message_round_trip() {
        let mut m = Message::new(MessageKind::Append, 1, 2, 3);
        m.entries = vec![Entry::new(EntryKind::Normal, 3, 5, vec![1, 2, 3])];
        m.commit = 4;
        let back: Message = decode(&encode(&m).unwrap()).unwrap();
        assert_eq!(m, back);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let hs = HardState {
            term: 300,
            vote: 2,
            commit: 99,
        };
        let bytes = encode(&hs).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<HardState>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&HardState::default()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<HardState>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut x: u32 = 12345;
        for len in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode::<Message>(&buf);
        }
    }
}
