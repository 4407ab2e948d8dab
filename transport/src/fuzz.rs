//! One entry point that runs every decoder a peer's bytes can reach, for the cargo-fuzz
//! target (transport/fuzz) and the bounded randomized run in the tests.

use crate::batch::decode_batch;
use crate::frame::{decode_frame, decode_value, Decoded};
use crate::handshake::{Handshake, HandshakeReply};
use crate::snapshot::{SnapshotFrame, SnapshotReply};
use flotilla_common::{codec, RaftEnvelope};

/// Frame bound used while fuzzing: large enough for any input the fuzzer makes.
const FUZZ_FRAME_BYTES_MAX: usize = 1 << 20;

/// Splits `bytes` into frames the way a connection's reader does and decodes each payload
/// as every kind of payload the protocol has, then decodes `bytes` itself as a raft batch
/// and as one envelope. Must never panic, whatever `bytes` holds; returns the number of
/// frames that passed their checks (so callers can tell garbage from valid input).
pub fn decode_untrusted(bytes: &[u8]) -> usize {
    let mut frames = 0;
    let mut rest = bytes;
    // Bounded: every step consumes at least a frame header.
    while let Ok(Decoded::Frame {
        payload,
        frame_bytes,
    }) = decode_frame(rest, FUZZ_FRAME_BYTES_MAX)
    {
        frames += 1;
        let mut out = Vec::new();
        let _ = decode_batch(payload, &mut out);
        let _ = decode_value::<Handshake>(payload);
        let _ = decode_value::<HandshakeReply>(payload);
        let _ = decode_value::<SnapshotFrame>(payload);
        let _ = decode_value::<SnapshotReply>(payload);
        rest = &rest[frame_bytes..];
    }
    let mut out = Vec::new();
    let _ = decode_batch(bytes, &mut out);
    let _ = codec::decode_envelope(bytes);
    let _ = codec::decode::<RaftEnvelope>(bytes);
    frames
}
