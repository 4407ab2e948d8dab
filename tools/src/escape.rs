//! A lossless, readable text form of binary keys, used in `/status` JSON and `ctl` tables.
//!
//! Printable ASCII other than `\` stands for itself, `\` is written `\\`, and every other byte
//! is `\xNN` (two lowercase hex digits). So `user/42` stays `user/42` and the byte 0xff reads
//! `\xff`; [`unescape`] turns the text back into exactly the same bytes.

/// Why a text is not a valid escaped key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnescapeError {
    /// A `\` not followed by `\` or `xNN`.
    #[error("bad escape at byte {0}")]
    BadEscape(usize),
    /// A character outside printable ASCII that should have been escaped.
    #[error("unescaped non-printable character at byte {0}")]
    NotPrintable(usize),
}

/// The escaped text of `key`.
pub fn escape(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                out.push_str("\\x");
                out.push(hex_digit(b >> 4));
                out.push(hex_digit(b & 0xf));
            }
        }
    }
    out
}

/// The bytes that `text` (made by [`escape`]) stands for.
pub fn unescape(text: &str) -> Result<Vec<u8>, UnescapeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => match bytes.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hi = bytes.get(i + 2).and_then(|&c| hex_value(c));
                    let lo = bytes.get(i + 3).and_then(|&c| hex_value(c));
                    match (hi, lo) {
                        (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                        _ => return Err(UnescapeError::BadEscape(i)),
                    }
                    i += 4;
                }
                _ => return Err(UnescapeError::BadEscape(i)),
            },
            b @ 0x20..=0x7e => {
                out.push(b);
                i += 1;
            }
            _ => return Err(UnescapeError::NotPrintable(i)),
        }
    }
    Ok(out)
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0xf)])
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `#[serde(with = "crate::escape::serde_bytes")]`: a `Bytes` field as escaped text.
pub mod serde_bytes {
    use super::{escape, unescape};
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the escaped text of `key`.
    pub fn serialize<S: Serializer>(key: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&escape(key))
    }

    /// Reads escaped text back into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        unescape(&text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let text = escape(&all);
        assert!(text.is_ascii());
        assert_eq!(unescape(&text).unwrap(), all);
    }

    #[test]
    fn printable_keys_stay_readable() {
        assert_eq!(escape(b"user/42"), "user/42");
        assert_eq!(escape(b"a\\b\xff\n"), "a\\\\b\\xff\\x0a");
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(unescape("a\\q"), Err(UnescapeError::BadEscape(1)));
        assert_eq!(unescape("\\x4"), Err(UnescapeError::BadEscape(0)));
        assert_eq!(unescape("é"), Err(UnescapeError::NotPrintable(0)));
    }
}
