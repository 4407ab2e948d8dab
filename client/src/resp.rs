//! RESP2 on the client side: requests out, replies in.
//!
//! The decoder is incremental (it answers "need more bytes" until a whole reply is in the
//! buffer) and bounded: every length a server announces is checked against a limit before
//! anything is reserved for it, so a broken or hostile server can make a call fail with a
//! protocol error but cannot make the client allocate without bound or panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Most bytes of one bulk string in a reply. The server refuses values above 8 MiB
/// (`BULK_BYTES_MAX` of its RESP parser); this leaves room should that grow.
pub const REPLY_BULK_BYTES_MAX: usize = 64 << 20;

/// Most elements of one array in a reply. A `RANGE` page is at most 20 000 elements and a
/// routing table one element per region; a million is far above both.
pub const REPLY_ARRAY_LEN_MAX: usize = 1 << 20;

/// Most levels of arrays within arrays. Flotilla's deepest reply (`FLOTILLA.REGIONS`) has 2.
pub const REPLY_DEPTH_MAX: usize = 8;

/// Most bytes of a status, error, integer or length line (without CRLF).
pub const REPLY_LINE_BYTES_MAX: usize = 64 << 10;

/// Most bytes of one whole reply. Bounds the connection's read buffer; the client asks for
/// scan pages small enough to stay far below it.
pub const REPLY_BYTES_MAX: usize = 512 << 20;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Status(String),
    /// `-ERR …`: the whole line after `-`, starting with its code (`ERR`, `TRYAGAIN`).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Bytes),
    /// `$-1` or `*-1`.
    Nil,
    /// `*2\r\n…`.
    Array(Vec<Value>),
}

/// Why a reply could not be decoded. The connection it came on is closed, since its place in
/// the stream is lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A type marker RESP2 does not have.
    #[error("unexpected reply type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A line without CRLF within [`REPLY_LINE_BYTES_MAX`].
    #[error("reply line longer than {REPLY_LINE_BYTES_MAX} bytes")]
    LineTooLong,
    /// An integer or length that is not a decimal number.
    #[error("bad number in reply: {0:?}")]
    BadNumber(String),
    /// A negative length other than -1, or one above the limits.
    #[error("bad length {0} in reply")]
    BadLength(i64),
    /// Arrays nested deeper than [`REPLY_DEPTH_MAX`].
    #[error("reply nested deeper than {REPLY_DEPTH_MAX}")]
    TooDeep,
    /// A bulk string not followed by CRLF.
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    /// The reply is larger than [`REPLY_BYTES_MAX`].
    #[error("reply larger than {REPLY_BYTES_MAX} bytes")]
    TooLarge,
    /// A status or error line that is not UTF-8.
    #[error("status line is not UTF-8")]
    NotUtf8,
}

/// Appends `args` as one multibulk request (what every Redis client sends).
pub fn encode_request(args: &[Bytes], out: &mut BytesMut) {
    let body: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(body + 16);
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        out.put_slice(a.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Takes one whole reply off the front of `buf`, if there is one.
///
/// A reply that has only partly arrived is looked at again from its start when more bytes
/// come; that costs one pass over its headers per read, which for the page sizes the client
/// asks for is small next to the network.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Value>, DecodeError> {
    match parse(buf, 0, 0)? {
        Some((value, end)) => {
            buf.advance(end);
            Ok(Some(value))
        }
        None if buf.len() > REPLY_BYTES_MAX => Err(DecodeError::TooLarge),
        None => Ok(None),
    }
}

/// The line starting at `pos` (without CRLF) and the position after it.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let rest = &buf[pos..];
    let window = &rest[..rest.len().min(REPLY_LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], pos + i + 2))),
        None if window.len() >= REPLY_LINE_BYTES_MAX + 2 => Err(DecodeError::LineTooLong),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, DecodeError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DecodeError::BadNumber(String::from_utf8_lossy(text).into_owned()))
}

fn text(bytes: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::NotUtf8)
}

/// Parses the reply starting at `pos`: the value and the position after it, or `None` when
/// the buffer ends first.
fn parse(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>, DecodeError> {
    let Some(&marker) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((body, next)) = line(buf, pos + 1)? else {
        return Ok(None);
    };
    let value = match marker {
        b'+' => Value::Status(text(body)?),
        b'-' => Value::Error(text(body)?),
        b':' => Value::Integer(number(body)?),
        b'$' => {
            let len = number(body)?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            let n = usize::try_from(len)
                .ok()
                .filter(|n| *n <= REPLY_BULK_BYTES_MAX && next + n <= REPLY_BYTES_MAX)
                .ok_or(DecodeError::BadLength(len))?;
            if buf.len() < next + n + 2 {
                return Ok(None);
            }
            if &buf[next + n..next + n + 2] != b"\r\n" {
                return Err(DecodeError::MissingCrlf);
            }
            return Ok(Some((
                Value::Bulk(Bytes::copy_from_slice(&buf[next..next + n])),
                next + n + 2,
            )));
        }
        b'*' => {
            let len = number(body)?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            let n = usize::try_from(len)
                .ok()
                .filter(|n| *n <= REPLY_ARRAY_LEN_MAX)
                .ok_or(DecodeError::BadLength(len))?;
            if depth >= REPLY_DEPTH_MAX {
                return Err(DecodeError::TooDeep);
            }
            // Every element takes at least 3 bytes (`:0\r\n` is 4), so a count the buffer
            // cannot yet hold is not reserved for in full.
            let mut items = Vec::with_capacity(n.min((buf.len() - next) / 3 + 1));
            let mut at = next;
            for _ in 0..n {
                match parse(buf, at, depth + 1)? {
                    Some((v, after)) => {
                        items.push(v);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            return Ok(Some((Value::Array(items), at)));
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Some((value, next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8]) -> Result<Vec<Value>, DecodeError> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(v) = decode(&mut buf)? {
            out.push(v);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn encodes_a_multibulk_request() {
        let mut out = BytesMut::new();
        encode_request(
            &[Bytes::from("SET"), Bytes::from("k"), Bytes::new()],
            &mut out,
        );
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn decodes_every_kind() {
        let wire = b"+OK\r\n-TRYAGAIN x\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n";
        assert_eq!(
            decode_all(wire).unwrap(),
            vec![
                Value::Status("OK".into()),
                Value::Error("TRYAGAIN x".into()),
                Value::Integer(-42),
                Value::Bulk(Bytes::from("a\r\n")),
                Value::Nil,
                Value::Nil,
                Value::Array(vec![
                    Value::Integer(1),
                    Value::Array(vec![Value::Bulk(Bytes::new())])
                ]),
            ]
        );
    }

    #[test]
    fn waits_for_the_whole_reply_at_every_split() {
        let wire = b"*3\r\n$5\r\nhello\r\n:7\r\n$-1\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            assert!(matches!(decode(&mut buf), Ok(Some(Value::Array(_)))));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn refuses_bad_and_oversized_replies() {
        let bad = |wire: &[u8]| decode(&mut BytesMut::from(wire));
        assert_eq!(bad(b"?x\r\n"), Err(DecodeError::UnknownType(b'?')));
        assert_eq!(bad(b":abc\r\n"), Err(DecodeError::BadNumber("abc".into())));
        assert_eq!(bad(b"$-2\r\n"), Err(DecodeError::BadLength(-2)));
        let huge_bulk = format!("${}\r\n", REPLY_BULK_BYTES_MAX + 1);
        assert!(matches!(
            bad(huge_bulk.as_bytes()),
            Err(DecodeError::BadLength(_))
        ));
        let huge_array = format!("*{}\r\n", i64::MAX);
        assert!(matches!(
            bad(huge_array.as_bytes()),
            Err(DecodeError::BadLength(_))
        ));
        assert_eq!(bad(b"$1\r\nab\r\n"), Err(DecodeError::MissingCrlf));
        assert_eq!(bad(b"+\xff\r\n"), Err(DecodeError::NotUtf8));
        let deep = "*1\r\n".repeat(REPLY_DEPTH_MAX + 1);
        assert_eq!(bad(deep.as_bytes()), Err(DecodeError::TooDeep));
        let long = vec![b'+'; REPLY_LINE_BYTES_MAX + 8];
        assert_eq!(bad(&long), Err(DecodeError::LineTooLong));
        // A line still arriving is not an error.
        assert_eq!(bad(b"+OK"), Ok(None));
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix and every one-byte corruption of a valid reply decodes or errs.
        let wire = b"*2\r\n*6\r\n:1\r\n$1\r\na\r\n$0\r\n\r\n:2\r\n:0\r\n$-1\r\n-ERR x\r\n";
        for i in 0..wire.len() {
            for b in [0u8, b'\r', b'\n', b'*', b'$', b'-', b'9', 0xff] {
                let mut w = wire.to_vec();
                w[i] = b;
                let mut buf = BytesMut::from(&w[..]);
                while let Ok(Some(_)) = decode(&mut buf) {}
            }
        }
    }
}
