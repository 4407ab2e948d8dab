//! Record framing: `[len u32][crc32c u32][type u8][payload]`, little-endian, where `len` is
//! the payload's length and the CRC covers the type byte and the payload. A record is the
//! unit of one group commit's write, so a crash can tear at most the last one.

/// Bytes before a record's payload.
pub(crate) const RECORD_HEADER_BYTES: usize = 9;

/// The largest payload a record may have. Larger lengths can only come from corruption:
/// groups are cut at `batch_bytes_max` (at most 32 MiB) plus one submission (at most
/// [`crate::wal::SUBMISSION_BYTES_MAX`]).
pub(crate) const RECORD_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordType {
    /// Region parts of one group commit.
    Batch = 1,
    /// Every region's state at the start of a segment (see `wal::payload::Checkpoint`).
    Checkpoint = 2,
}

impl RecordType {
    fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordType::Batch),
            2 => Some(RecordType::Checkpoint),
            _ => None,
        }
    }
}

/// Starts a record in `buf`: call [`finish`] once the payload has been appended.
pub(crate) fn begin(buf: &mut Vec<u8>, ty: RecordType) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.push(ty as u8);
    start
}

/// Fills in the length and CRC of the record begun at `start`.
pub(crate) fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - RECORD_HEADER_BYTES) as u32;
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of reading a record at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// A good record and its total length.
    Record {
        ty: RecordType,
        payload: &'a [u8],
        len: usize,
    },
    /// The buffer ends inside the record.
    Incomplete,
    /// The record is bad.
    Bad(String),
}

/// Reads the record at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Parsed::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > RECORD_PAYLOAD_BYTES_MAX {
        return Parsed::Bad(format!(
            "record length {len} exceeds {RECORD_PAYLOAD_BYTES_MAX}"
        ));
    }
    if buf.len() < RECORD_HEADER_BYTES + len {
        return Parsed::Incomplete;
    }
    let body = &buf[8..RECORD_HEADER_BYTES + len];
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Parsed::Bad(format!(
            "checksum mismatch: stored {crc:#010x}, computed {actual:#010x}"
        ));
    }
    match RecordType::from_u8(body[0]) {
        Some(ty) => Parsed::Record {
            ty,
            payload: &body[1..],
            len: RECORD_HEADER_BYTES + len,
        },
        None => Parsed::Bad(format!("unknown record type {}", body[0])),
    }
}

/// Whether a good record starts anywhere after `from` in `buf`. A torn tail is the last write
/// cut short, so nothing good can follow it; a bad record followed by good ones is corruption.
/// The search stops one maximal record past `from`, where the next real record must begin.
pub(crate) fn good_record_after(buf: &[u8], from: usize) -> bool {
    let end = buf
        .len()
        .min(from + RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX + 1);
    (from + 1..end).any(|pos| {
        let rest = &buf[pos..];
        // The type byte is a cheap filter before the checksum.
        rest.len() > RECORD_HEADER_BYTES
            && RecordType::from_u8(rest[8]).is_some()
            && matches!(parse(rest), Parsed::Record { .. })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        let start = begin(&mut buf, RecordType::Batch);
        buf.extend_from_slice(b"payload bytes");
        finish(&mut buf, start);
        assert_eq!(
            parse(&buf),
            Parsed::Record {
                ty: RecordType::Batch,
                payload: b"payload bytes",
                len: buf.len()
            }
        );
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(parse(&bad), Parsed::Record { .. }), "bit {bit}");
        }
    }

    #[test]
    fn good_record_after_finds_the_next_record_only() {
        let mut buf = Vec::new();
        for _ in 0..2 {
            let start = begin(&mut buf, RecordType::Checkpoint);
            buf.extend_from_slice(&[7; 40]);
            finish(&mut buf, start);
        }
        let mut torn = buf.clone();
        torn.truncate(buf.len() - 3);
        assert!(!good_record_after(&torn, 49));
        let mut flipped = buf.clone();
        flipped[20] ^= 1;
        assert!(good_record_after(&flipped, 0));
    }
}
