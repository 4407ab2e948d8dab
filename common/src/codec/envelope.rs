//! The hand-written encoding of a [`RaftEnvelope`], the one value the transport moves
//! millions of times a second.
//!
//! bincode through serde costs 0.3–0.5 µs to decode a small append (a generic reader and an
//! error path per field, through serde's visitors). This layout is written and read field
//! by field, with one bounds check per read.
//!
//! Decoded byte strings (entry data, context) are copies, not slices of the received
//! buffer: a slice would keep the whole read buffer (64 KiB and up) alive for as long as
//! the entry lives, and the engine keeps recent entries in a cache bounded by their own
//! size, so a handful of cached 16-byte entries could pin megabytes.
//!
//! Layout, after a format byte:
//!
//! ```text
//! FORMAT_FIELDS (1):
//!   region_id from_node to_node                      varint ×3
//!   kind u8 · flags u8 (bit 0 reject, bit 1 request_snapshot)
//!   from to term log_term index commit reject_hint   varint ×7
//!   context                                          varint length, bytes
//!   entries                                          varint count, then each:
//!     term index                                     varint ×2
//!     kind u8 · data                                 varint length, bytes
//! FORMAT_BINCODE (0):
//!   the envelope in the module's bincode configuration (messages carrying a snapshot,
//!   which are rare and travel on their own connection anyway)
//! ```
//!
//! A varint is bincode's: a value below 251 is one byte; 251, 252 and 253 announce a
//! little-endian `u16`, `u32` or `u64`. Fields come in a fixed order, so a reader never
//! searches; the format byte lets a later layout sit next to this one.

use super::{decode, encode_into, CodecError};
use crate::{Entry, EntryKind, Message, MessageKind, RaftEnvelope};
use bytes::Bytes;

/// Format byte: the envelope follows in bincode.
pub const FORMAT_BINCODE: u8 = 0;
/// Format byte: the envelope follows field by field (the layout above).
pub const FORMAT_FIELDS: u8 = 1;

/// Most bytes one varint takes (marker and `u64`).
const VARINT_BYTES_MAX: usize = 9;
/// Fewest bytes an entry takes on the wire (term, index, kind, data length): bounds how
/// many entries a declared count may pre-allocate for.
const ENTRY_BYTES_MIN: usize = 4;
/// Most bytes of an entry other than its data, for reserving before writing.
const ENTRY_FIXED_BYTES_MAX: usize = 3 * VARINT_BYTES_MAX + 1;
/// Most bytes of an envelope other than its context and entries.
const ENVELOPE_FIXED_BYTES_MAX: usize = 1 + 3 * VARINT_BYTES_MAX + 2 + 9 * VARINT_BYTES_MAX;

const FLAG_REJECT: u8 = 1;
const FLAG_REQUEST_SNAPSHOT: u8 = 2;

/// Every `MessageKind`, by its byte on the wire (its declaration order).
const MESSAGE_KINDS: [MessageKind; 17] = [
    MessageKind::Append,
    MessageKind::AppendResponse,
    MessageKind::RequestVote,
    MessageKind::RequestVoteResponse,
    MessageKind::RequestPreVote,
    MessageKind::RequestPreVoteResponse,
    MessageKind::Snapshot,
    MessageKind::Heartbeat,
    MessageKind::HeartbeatResponse,
    MessageKind::TimeoutNow,
    MessageKind::ReadIndex,
    MessageKind::ReadIndexResponse,
    MessageKind::TransferLeader,
    MessageKind::Propose,
    MessageKind::PeerRemoved,
    MessageKind::Node,
    MessageKind::Commit,
];

fn message_kind_byte(kind: MessageKind) -> u8 {
    // Exhaustive on purpose: a new kind must be given a byte here and in MESSAGE_KINDS.
    match kind {
        MessageKind::Append => 0,
        MessageKind::AppendResponse => 1,
        MessageKind::RequestVote => 2,
        MessageKind::RequestVoteResponse => 3,
        MessageKind::RequestPreVote => 4,
        MessageKind::RequestPreVoteResponse => 5,
        MessageKind::Snapshot => 6,
        MessageKind::Heartbeat => 7,
        MessageKind::HeartbeatResponse => 8,
        MessageKind::TimeoutNow => 9,
        MessageKind::ReadIndex => 10,
        MessageKind::ReadIndexResponse => 11,
        MessageKind::TransferLeader => 12,
        MessageKind::Propose => 13,
        MessageKind::PeerRemoved => 14,
        MessageKind::Node => 15,
        MessageKind::Commit => 16,
    }
}

fn entry_kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Normal => 0,
        EntryKind::ConfChange => 1,
    }
}

#[inline(always)]
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline(always)]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends the encoding of `envelope` (format byte first) to `out`; returns the bytes
/// written.
pub fn encode_envelope_into(
    envelope: &RaftEnvelope,
    out: &mut Vec<u8>,
) -> Result<usize, CodecError> {
    let before = out.len();
    let m = &envelope.message;
    if m.snapshot.is_some() {
        out.push(FORMAT_BINCODE);
        return match encode_into(envelope, out) {
            Ok(n) => Ok(n + 1),
            Err(e) => {
                out.truncate(before);
                Err(e)
            }
        };
    }
    // One reservation for the whole envelope, so the pushes below never reallocate.
    let data_bytes: usize = m.entries.iter().map(|e| e.data.len()).sum();
    out.reserve(
        ENVELOPE_FIXED_BYTES_MAX
            + m.context.len()
            + m.entries.len() * ENTRY_FIXED_BYTES_MAX
            + data_bytes,
    );
    out.push(FORMAT_FIELDS);
    put_varint(out, envelope.region_id);
    put_varint(out, envelope.from_node);
    put_varint(out, envelope.to_node);
    let flags = if m.reject { FLAG_REJECT } else { 0 }
        | if m.request_snapshot {
            FLAG_REQUEST_SNAPSHOT
        } else {
            0
        };
    out.extend_from_slice(&[message_kind_byte(m.kind), flags]);
    for v in [
        m.from,
        m.to,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.reject_hint,
    ] {
        put_varint(out, v);
    }
    put_bytes(out, &m.context);
    put_varint(out, m.entries.len() as u64);
    for e in &m.entries {
        put_varint(out, e.term);
        put_varint(out, e.index);
        out.push(entry_kind_byte(e.kind));
        put_bytes(out, &e.data);
    }
    Ok(out.len() - before)
}

/// A cursor over `buf[at..]`; every read checks what is left.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

#[cold]
fn truncated(what: &str) -> CodecError {
    CodecError::Decode(format!("envelope truncated in {what}"))
}

impl Reader<'_> {
    #[inline(always)]
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    #[inline(always)]
    fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.at).ok_or_else(|| truncated(what))?;
        self.at += 1;
        Ok(b)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CodecError> {
        let bytes = self
            .buf
            .get(self.at..self.at + N)
            .ok_or_else(|| truncated(what))?;
        self.at += N;
        // The slice is exactly N long.
        let mut a = [0; N];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    #[inline(always)]
    fn varint(&mut self, what: &str) -> Result<u64, CodecError> {
        match self.u8(what)? {
            b @ 0..=250 => Ok(u64::from(b)),
            251 => Ok(u64::from(u16::from_le_bytes(self.array(what)?))),
            252 => Ok(u64::from(u32::from_le_bytes(self.array(what)?))),
            253 => Ok(u64::from_le_bytes(self.array(what)?)),
            b => Err(CodecError::Decode(format!(
                "bad varint marker {b} in {what}"
            ))),
        }
    }

    /// A length-prefixed byte string, copied out of the buffer.
    #[inline(always)]
    fn bytes(&mut self, what: &str) -> Result<Bytes, CodecError> {
        let len = self.varint(what)?;
        if len > self.left() as u64 {
            return Err(truncated(what));
        }
        let end = self.at + len as usize;
        let b = if len == 0 {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&self.buf[self.at..end])
        };
        self.at = end;
        Ok(b)
    }
}

/// Decodes one envelope that fills `bytes` exactly (trailing bytes are an error).
///
/// Never panics; allocates only the envelope's own parts (entries and byte strings), each
/// checked against the bytes left before it is allocated, so what a decode allocates is
/// bounded by a small multiple of the input's size.
pub fn decode_envelope(bytes: &[u8]) -> Result<RaftEnvelope, CodecError> {
    let mut r = Reader { buf: bytes, at: 0 };
    match r.u8("format")? {
        FORMAT_FIELDS => {}
        FORMAT_BINCODE => return decode(&bytes[1..]),
        f => return Err(CodecError::Decode(format!("unknown envelope format {f}"))),
    }
    let region_id = r.varint("region_id")?;
    let from_node = r.varint("from_node")?;
    let to_node = r.varint("to_node")?;
    let [kind, flags] = r.array("kind")?;
    let kind = *MESSAGE_KINDS
        .get(usize::from(kind))
        .ok_or_else(|| CodecError::Decode(format!("unknown message kind {kind}")))?;
    if flags & !(FLAG_REJECT | FLAG_REQUEST_SNAPSHOT) != 0 {
        return Err(CodecError::Decode(format!(
            "unknown message flags {flags:#x}"
        )));
    }
    let mut m = Message {
        kind,
        from: r.varint("from")?,
        to: r.varint("to")?,
        term: r.varint("term")?,
        log_term: r.varint("log_term")?,
        index: r.varint("index")?,
        commit: r.varint("commit")?,
        reject_hint: r.varint("reject_hint")?,
        reject: flags & FLAG_REJECT != 0,
        request_snapshot: flags & FLAG_REQUEST_SNAPSHOT != 0,
        context: r.bytes("context")?,
        entries: Vec::new(),
        snapshot: None,
    };
    let count = r.varint("entry count")?;
    if count > (r.left() / ENTRY_BYTES_MIN) as u64 {
        return Err(CodecError::Decode(format!(
            "{count} entries declared in {} bytes",
            r.left()
        )));
    }
    m.entries.reserve_exact(count as usize);
    for _ in 0..count {
        let term = r.varint("entry term")?;
        let index = r.varint("entry index")?;
        let kind = match r.u8("entry kind")? {
            0 => EntryKind::Normal,
            1 => EntryKind::ConfChange,
            k => return Err(CodecError::Decode(format!("unknown entry kind {k}"))),
        };
        let data = r.bytes("entry data")?;
        m.entries.push(Entry {
            term,
            index,
            kind,
            data,
        });
    }
    if r.left() != 0 {
        return Err(CodecError::TrailingBytes(r.left()));
    }
    Ok(RaftEnvelope {
        region_id,
        from_node,
        to_node,
        message: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfState, Snapshot, SnapshotMetadata};

    /// Values on each side of every varint width.
    const EDGES: [u64; 9] = [
        0,
        1,
        250,
        251,
        u16::MAX as u64,
        u16::MAX as u64 + 1,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        u64::MAX,
    ];

    fn round_trip(e: &RaftEnvelope) -> Vec<u8> {
        let mut buf = vec![0xAA]; // encoding appends after what is there
        let n = encode_envelope_into(e, &mut buf).unwrap();
        assert_eq!(n, buf.len() - 1);
        assert_eq!(&decode_envelope(&buf[1..]).unwrap(), e);
        buf[1..].to_vec()
    }

    fn sample(kind: MessageKind, v: u64, entries: usize) -> RaftEnvelope {
        let mut m = Message::new(kind, v, v ^ 1, v.wrapping_add(2));
        m.log_term = v.rotate_left(7);
        m.index = v;
        m.commit = !v;
        m.reject_hint = v / 3;
        m.context = Bytes::from(vec![v as u8; (v % 300) as usize]);
        m.entries = (0..entries as u64)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    EntryKind::Normal
                } else {
                    EntryKind::ConfChange
                };
                Entry::new(
                    kind,
                    v ^ i,
                    v.wrapping_add(i),
                    vec![i as u8; i as usize * 7],
                )
            })
            .collect();
        RaftEnvelope::new(v.wrapping_mul(3), v, !v, m)
    }

    #[test]
    fn kind_bytes_match_the_table() {
        for (i, k) in MESSAGE_KINDS.iter().enumerate() {
            assert_eq!(usize::from(message_kind_byte(*k)), i, "{k:?}");
        }
    }

    #[test]
    fn every_kind_flag_and_varint_width_round_trips() {
        for kind in MESSAGE_KINDS {
            for v in EDGES {
                for entries in [0, 1, 3] {
                    for (reject, request_snapshot) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let mut e = sample(kind, v, entries);
                        e.message.reject = reject;
                        e.message.request_snapshot = request_snapshot;
                        let bytes = round_trip(&e);
                        assert_eq!(bytes[0], FORMAT_FIELDS);
                    }
                }
            }
        }
        round_trip(&RaftEnvelope::default());
    }

    #[test]
    fn an_envelope_with_a_snapshot_goes_through_bincode() {
        let mut e = sample(MessageKind::Snapshot, 300, 0);
        e.message.snapshot = Some(Box::new(Snapshot {
            metadata: SnapshotMetadata {
                index: 9,
                term: 2,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    auto_leave: true,
                    ..Default::default()
                },
            },
            data: Bytes::from_static(b"image"),
        }));
        let bytes = round_trip(&e);
        assert_eq!(bytes[0], FORMAT_BINCODE);
    }

    #[test]
    fn a_small_append_is_small() {
        // The transport benchmark's message: 16 bytes of data, ~50 bytes on the wire.
        let mut m = Message::new(MessageKind::Append, 1, 2, 7);
        (m.index, m.log_term, m.commit) = (70_000, 7, 70_000);
        m.entries = vec![Entry::new(EntryKind::Normal, 7, 70_001, vec![5; 16])];
        let bytes = round_trip(&RaftEnvelope::new(63, 1, 2, m));
        assert!(bytes.len() <= 50, "{} bytes", bytes.len());
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error() {
        for e in [
            sample(MessageKind::Append, u32::MAX as u64 + 5, 3),
            sample(MessageKind::Heartbeat, 7, 0),
        ] {
            let mut buf = Vec::new();
            encode_envelope_into(&e, &mut buf).unwrap();
            for cut in 0..buf.len() {
                assert!(decode_envelope(&buf[..cut]).is_err(), "cut at {cut}");
            }
            buf.push(0);
            assert!(matches!(
                decode_envelope(&buf),
                Err(CodecError::TrailingBytes(1))
            ));
        }
    }

    #[test]
    fn bad_fields_are_errors() {
        let mut small = sample(MessageKind::Append, 5, 1);
        (small.region_id, small.from_node, small.to_node) = (3, 1, 2);
        let mut buf = Vec::new();
        encode_envelope_into(&small, &mut buf).unwrap();
        // Offsets in this encoding: format 0, three one-byte ids 1..4, kind 4, flags 5.
        let bad = |at: usize, v: u8| {
            let mut b = buf.clone();
            b[at] = v;
            decode_envelope(&b).is_err()
        };
        assert!(bad(0, 2), "unknown format");
        assert!(bad(1, 254), "bad varint marker");
        assert!(bad(4, MESSAGE_KINDS.len() as u8), "unknown message kind");
        assert!(bad(5, 4), "unknown flag");
        // A declared entry count far beyond the bytes left is refused before reserving.
        let mut e = sample(MessageKind::Append, 5, 0);
        e.message.context = Bytes::new();
        let mut b = Vec::new();
        encode_envelope_into(&e, &mut b).unwrap();
        *b.last_mut().unwrap() = 253; // the entry count becomes a u64 ...
        b.extend_from_slice(&u64::MAX.to_le_bytes()); // ... of 2^64 - 1
        assert!(decode_envelope(&b).is_err());
        assert!(decode_envelope(&[FORMAT_FIELDS]).is_err());
        assert!(decode_envelope(&[]).is_err());
    }

    #[test]
    fn garbage_and_mutations_do_not_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..2000 {
            let mut buf: Vec<u8> = (0..len % 400).map(|_| next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first %= 2; // mostly valid format bytes, to reach the field decoders
            }
            let _ = decode_envelope(&buf);
        }
        let mut valid = Vec::new();
        encode_envelope_into(&sample(MessageKind::Append, 70_000, 3), &mut valid).unwrap();
        for at in 0..valid.len() {
            for v in [0, 1, 250, 251, 252, 253, 254, 255, next() as u8] {
                let mut b = valid.clone();
                b[at] = v;
                if let Ok(e) = decode_envelope(&b) {
                    // Whatever decodes is a value that encodes again.
                    let mut again = Vec::new();
                    encode_envelope_into(&e, &mut again).unwrap();
                }
            }
        }
    }
}
