//! RESP2 replies and their encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::service::ServiceError;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status line (never holds CR or LF).
    Simple(&'static str),
    /// `-ERR …`: the whole line after `-`, starting with the error code (`ERR`, `TRYAGAIN`).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Bytes),
    /// `$-1`: no value.
    Null,
    /// `*2\r\n…`.
    Array(Vec<Reply>),
}

impl Reply {
    /// `-ERR <msg>`, the code Redis uses for every ordinary error.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// The reply for a failed service call: `-TRYAGAIN …` when sending the same command again
    /// may succeed (Redis clients retry on that code), `-ERR …` otherwise.
    pub fn from_service_error(e: &ServiceError) -> Reply {
        if e.is_retryable() {
            Reply::Error(format!("TRYAGAIN {e}"))
        } else {
            Reply::err(e)
        }
    }

    /// An id or counter: an integer reply when it fits in `i64` (RESP integers are signed),
    /// else its decimal digits as a bulk string, so nothing is ever clamped.
    pub fn unsigned(n: u64) -> Reply {
        match i64::try_from(n) {
            Ok(i) => Reply::Integer(i),
            Err(_) => Reply::Bulk(Bytes::from(n.to_string())),
        }
    }

    /// A bulk string, or `Null` for `None`.
    pub fn bulk_or_null(value: Option<Bytes>) -> Reply {
        value.map_or(Reply::Null, Reply::Bulk)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the wire form of this reply to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // An error line cannot carry CR or LF; a message from deeper down might.
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean);
            }
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Null => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, marker: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(marker);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: Reply) -> String {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn encodes_every_kind() {
        assert_eq!(wire(Reply::Simple("OK")), "+OK\r\n");
        assert_eq!(wire(Reply::err("bad\r\nthing")), "-ERR bad  thing\r\n");
        assert_eq!(wire(Reply::Integer(-3)), ":-3\r\n");
        assert_eq!(wire(Reply::Bulk(Bytes::from("a\r\nb"))), "$4\r\na\r\nb\r\n");
        assert_eq!(wire(Reply::Null), "$-1\r\n");
        let arr = Reply::Array(vec![Reply::Integer(1), Reply::Null]);
        assert_eq!(wire(arr), "*2\r\n:1\r\n$-1\r\n");
        assert_eq!(wire(Reply::Array(vec![])), "*0\r\n");
        assert_eq!(wire(Reply::unsigned(7)), ":7\r\n");
        assert_eq!(
            wire(Reply::unsigned(u64::MAX)),
            "$20\r\n18446744073709551615\r\n"
        );
    }

    #[test]
    fn retryable_service_errors_are_tryagain() {
        let e = ServiceError::NotLeader {
            region: 7,
            leader_node: Some(2),
        };
        assert_eq!(
            wire(Reply::from_service_error(&e)),
            "-TRYAGAIN region 7: not leader (leader on node 2); retry\r\n"
        );
        let e = ServiceError::InvalidArgument("value is not an integer or out of range".into());
        assert_eq!(
            wire(Reply::from_service_error(&e)),
            "-ERR value is not an integer or out of range\r\n"
        );
    }
}
