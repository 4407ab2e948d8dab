//! Incremental, bounded parsing of RESP2 requests: multibulk (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`,
//! what every client library sends) and inline (`GET k\r\n`, what a person types into telnet).
//!
//! [`RequestParser::next`] looks at the start of a connection's read buffer and either takes one
//! whole request off it, says it needs more bytes, or reports a protocol error. After a
//! protocol error the position in the stream is lost, so the connection answers the error and
//! closes (as Redis does). Every length is checked against a limit *before* any memory is
//! reserved for it, so a client cannot make the server allocate by announcing a big size.

use bytes::{Bytes, BytesMut};

/// Most bytes one bulk string (a key or a value) may have. A value travels in one raft
/// entry, is replicated in one frame and written in one WAL batch; values of more than a few
/// MiB belong in a blob store, with the key here.
pub const BULK_BYTES_MAX: usize = 8 << 20;

/// Most bytes one request may have, headers included. Bounds a connection's read buffer
/// (one partial request plus one read) and what one `MSET` hands to the service.
pub const REQUEST_BYTES_MAX: usize = 32 << 20;

/// Most arguments one multibulk request may have: `MSET` of 32 Ki pairs or `DEL` of 64 Ki keys.
/// Checked before the argument list is allocated, so `*2147483647` costs nothing.
pub const REQUEST_ARGS_MAX: usize = 64 << 10;

/// Most bytes of one inline request line (the same as Redis), so a stream without a newline
/// cannot grow the buffer forever.
pub const INLINE_BYTES_MAX: usize = 64 << 10;

/// Most bytes of a `*N` or `$N` header line: the marker, a sign, 19 digits and CRLF fit with
/// room; anything longer is garbage, not a slow client.
const HEADER_LINE_BYTES_MAX: usize = 32;

/// Why a request could not be parsed. The text follows Redis' wording, so it reads as
/// `-ERR Protocol error: …` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*N` with N negative, not a number, or above [`REQUEST_ARGS_MAX`].
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$N` with N negative, not a number, or above [`BULK_BYTES_MAX`].
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Something other than `$` where a bulk string must start.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
    /// The request as a whole is above [`REQUEST_BYTES_MAX`].
    #[error("Protocol error: request larger than {REQUEST_BYTES_MAX} bytes")]
    RequestTooLarge,
    /// An inline line above [`INLINE_BYTES_MAX`].
    #[error("Protocol error: too big inline request")]
    InlineTooLarge,
    /// An inline line with an unclosed quote or a bad escape.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One request: the command name and its arguments. Empty for a request that asks for
/// nothing (`*0`, a blank inline line); such requests get no answer.
pub type Request = Vec<Bytes>;

/// Takes requests off the front of a connection's read buffer, one at a time.
///
/// A multibulk request that arrives in pieces is not parsed again from its start on every
/// read: the parser remembers how far it got (the offsets of the arguments seen so far), so a
/// 32 MiB `MSET` arriving in 16 KiB reads costs one pass, not two thousand.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// The multibulk request at the front of the buffer, as far as it has been read. Offsets
    /// are from the front of the buffer, which only moves when a whole request is taken.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    /// Arguments announced by `*N`.
    count: usize,
    /// `(start, end)` of each whole argument seen so far.
    spans: Vec<(usize, usize)>,
    /// Where the next argument's `$` header starts.
    pos: usize,
}

impl RequestParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one whole request off the front of `buf`: `Ok(Some(request))`, or `Ok(None)`
    /// when `buf` holds only part of one (nothing is consumed then; call again once more bytes
    /// were appended, without consuming anything from `buf` in between). After an error the
    /// stream cannot be followed any further.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(None),
                Some(b'*') => {}
                Some(_) => return parse_inline(buf),
            }
            let Some((count, pos)) = header(buf, 0, ProtocolError::InvalidMultibulkLength)? else {
                return Ok(None);
            };
            let count =
                usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
            if count > REQUEST_ARGS_MAX {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            // Sized by what has arrived, not by what the header claims.
            let spans = Vec::with_capacity(count.min(64));
            self.partial = Some(Partial { count, spans, pos });
        }
        let result = self.continue_multibulk(buf);
        if !matches!(result, Ok(None)) {
            self.partial = None;
        }
        result
    }

    fn continue_multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let Some(partial) = self.partial.as_mut() else {
            return Ok(None);
        };
        // Offsets first, bytes after: nothing is consumed until the whole request is there.
        while partial.spans.len() < partial.count {
            let pos = partial.pos;
            match buf.get(pos) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(&other) => return Err(ProtocolError::ExpectedBulk(char::from(other))),
            }
            let Some((len, start)) = header(buf, pos, ProtocolError::InvalidBulkLength)? else {
                return Ok(None);
            };
            let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
            if len > BULK_BYTES_MAX {
                return Err(ProtocolError::InvalidBulkLength);
            }
            let end = start + len;
            if end + 2 > REQUEST_BYTES_MAX {
                return Err(ProtocolError::RequestTooLarge);
            }
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            partial.spans.push((start, end));
            partial.pos = end + 2;
        }
        let frame = buf.split_to(partial.pos).freeze();
        let spans = std::mem::take(&mut partial.spans);
        Ok(Some(
            spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect(),
        ))
    }
}

/// Reads the `<marker><integer>\r\n` line starting at `at`: the integer and the position after
/// the line, or `None` if the line is not complete yet.
fn header(
    buf: &[u8],
    at: usize,
    bad: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[at..buf.len().min(at + HEADER_LINE_BYTES_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if window.len() == HEADER_LINE_BYTES_MAX {
            Err(bad)
        } else {
            Ok(None)
        };
    };
    match buf.get(at + cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(bad),
    }
    let digits = &window[1..cr];
    let n = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(bad)?;
    Ok(Some((n, at + cr + 2)))
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().take(INLINE_BYTES_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= INLINE_BYTES_MAX {
            Err(ProtocolError::InlineTooLarge)
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(nl + 1);
    let line = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
    split_inline(line).map(Some)
}

/// Splits an inline line into arguments the way redis-cli and Redis do: on spaces and tabs,
/// with `"…"` (escapes `\" \\ \n \r \t \xHH`) and `'…'` (escape `\'`) quoting. A closing quote
/// must be followed by a space or the end of the line.
fn split_inline(line: &[u8]) -> Result<Request, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let (byte, used) = double_quoted_escape(&line[i..])?;
                            arg.push(byte);
                            i += used;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                closing_quote_ends_arg(line, i)?;
            }
            b'\'' => {
                i += 1;
                loop {
                    match (line.get(i), line.get(i + 1)) {
                        (None, _) => return Err(ProtocolError::UnbalancedQuotes),
                        (Some(b'\''), _) => break,
                        (Some(b'\\'), Some(b'\'')) => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        (Some(&b), _) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
                i += 1;
                closing_quote_ends_arg(line, i)?;
            }
            _ => {
                while i < line.len() && line[i] != b' ' && line[i] != b'\t' {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
}

fn closing_quote_ends_arg(line: &[u8], i: usize) -> Result<(), ProtocolError> {
    match line.get(i) {
        None | Some(b' ') | Some(b'\t') => Ok(()),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

/// The byte a backslash escape inside double quotes stands for, and how many bytes it used.
fn double_quoted_escape(s: &[u8]) -> Result<(u8, usize), ProtocolError> {
    let hex = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    match s.get(1) {
        Some(b'n') => Ok((b'\n', 2)),
        Some(b'r') => Ok((b'\r', 2)),
        Some(b't') => Ok((b'\t', 2)),
        Some(b'x') => match (
            s.get(2).and_then(|&c| hex(c)),
            s.get(3).and_then(|&c| hex(c)),
        ) {
            (Some(hi), Some(lo)) => Ok((hi << 4 | lo, 4)),
            _ => Ok((b'x', 2)),
        },
        Some(&c) => Ok((c, 2)),
        None => Err(ProtocolError::UnbalancedQuotes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Request>, Result<(), ProtocolError>, usize) {
        let mut buf = BytesMut::from(input);
        let mut parser = RequestParser::new();
        let mut out = Vec::new();
        loop {
            match parser.next(&mut buf) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return (out, Ok(()), buf.len()),
                Err(e) => return (out, Err(e), buf.len()),
            }
        }
    }

    fn strs(r: &Request) -> Vec<&str> {
        r.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
    }

    #[test]
    fn multibulk_pipeline() {
        let (reqs, res, rest) =
            parse_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET");
        assert_eq!(res, Ok(()));
        assert_eq!(reqs.len(), 2);
        assert_eq!(strs(&reqs[1]), ["GET", "k"]);
        assert_eq!(rest, 11, "the partial third request stays in the buffer");
    }

    #[test]
    fn every_split_point_gives_the_same_request() {
        let wire = b"*3\r\n$3\r\nSET\r\n$5\r\nk\r\ney\r\n$0\r\n\r\n";
        let want = vec![Bytes::from("SET"), Bytes::from("k\r\ney"), Bytes::new()];
        for cut in 0..wire.len() {
            // One parser sees the first part, then the rest.
            let mut parser = RequestParser::new();
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(parser.next(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(
                buf.len(),
                cut,
                "nothing is consumed before the request is whole"
            );
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(
                parser.next(&mut buf),
                Ok(Some(want.clone())),
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
        // Byte by byte, two requests in a row, through one parser.
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire.iter().chain(wire.iter()) {
            buf.extend_from_slice(&[b]);
            if let Some(r) = parser.next(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, vec![want.clone(), want]);
    }

    #[test]
    fn bad_lengths_are_errors_before_allocation() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*-5\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*+1\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*2147483647\r\n", ProtocolError::InvalidMultibulkLength),
            (
                b"*99999999999999999999999\r\n",
                ProtocolError::InvalidMultibulkLength,
            ),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$999999999\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(':')),
            (b"*1\r\n$1\r\nabc\r\n", ProtocolError::MissingCrlf),
            (b"*1\r\x00", ProtocolError::InvalidMultibulkLength),
            (
                b"*11111111111111111111111111111111111111",
                ProtocolError::InvalidMultibulkLength,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_all(input).1,
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn request_size_is_bounded_as_a_whole() {
        let mut wire = format!("*{}\r\n", REQUEST_BYTES_MAX / BULK_BYTES_MAX + 1).into_bytes();
        let chunk = vec![b'v'; BULK_BYTES_MAX];
        let mut result = Ok(None);
        for _ in 0..REQUEST_BYTES_MAX / BULK_BYTES_MAX + 1 {
            wire.extend_from_slice(format!("${BULK_BYTES_MAX}\r\n").as_bytes());
            wire.extend_from_slice(&chunk);
            wire.extend_from_slice(b"\r\n");
            result = RequestParser::new().next(&mut BytesMut::from(&wire[..]));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ProtocolError::RequestTooLarge));
    }

    #[test]
    fn inline_requests() {
        let (reqs, res, _) = parse_all(b"PING\r\nSET k \"a b\\x41\\n\" \t\r\nGET 'it\\'s'\n\r\n");
        assert_eq!(res, Ok(()));
        assert_eq!(strs(&reqs[0]), ["PING"]);
        assert_eq!(strs(&reqs[1]), ["SET", "k", "a bA\n"]);
        assert_eq!(strs(&reqs[2]), ["GET", "it's"]);
        assert!(reqs[3].is_empty(), "a blank line is an empty request");
        assert_eq!(
            parse_all(b"GET \"k\r\n").1,
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(
            parse_all(b"GET \"k\"x\r\n").1,
            Err(ProtocolError::UnbalancedQuotes)
        );
        let long = vec![b'a'; INLINE_BYTES_MAX];
        assert_eq!(parse_all(&long).1, Err(ProtocolError::InlineTooLarge));
        assert_eq!(
            parse_all(&long[1..]).1,
            Ok(()),
            "shorter: waits for the newline"
        );
    }
}

/// Fuzzing the parser with proptest (bounded for CI; `PROPTEST_CASES=200000 cargo test
/// --release -p flotilla-tools --lib resp::parser::fuzz` runs it longer): arbitrary bytes
/// fed in arbitrary pieces never panic and never loop, and well-formed multibulk requests
/// come back exactly, however they are split.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces cut at `cuts`; answers the requests and whether it stopped on
    /// an error.
    fn feed(input: &[u8], cuts: &[usize]) -> (Vec<Request>, bool) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for p in points {
            buf.extend_from_slice(&input[fed..p]);
            fed = p;
            loop {
                let before = buf.len();
                match parser.next(&mut buf) {
                    Ok(Some(r)) => {
                        // Progress: a request always consumes bytes.
                        assert!(buf.len() < before, "a request consumed nothing");
                        out.push(r);
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                        break;
                    }
                    Err(_) => return (out, true),
                }
            }
        }
        (out, false)
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(2000),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn encode(requests: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in requests {
            out.extend_from_slice(format!("*{}\r\n", r.len()).as_bytes());
            for a in r {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            feed(&input, &cuts);
        }

        #[test]
        fn resp_shaped_noise_never_panics(
            parts in proptest::collection::vec(prop_oneof![
                Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()),
                Just(b"-1".to_vec()), Just(b"0".to_vec()), Just(b"3".to_vec()),
                Just(b"99999999999999999999".to_vec()), Just(b"\"".to_vec()),
                Just(b" ".to_vec()), Just(b"SET".to_vec()), Just(b"\\x".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..4),
            ], 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            feed(&parts.concat(), &cuts);
        }

        #[test]
        fn well_formed_requests_come_back_however_they_are_split(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6),
                1..6,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let (got, failed) = feed(&encode(&requests), &cuts);
            prop_assert!(!failed);
            let want: Vec<Request> = requests
                .iter()
                .map(|r| r.iter().map(|a| Bytes::copy_from_slice(a)).collect())
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
