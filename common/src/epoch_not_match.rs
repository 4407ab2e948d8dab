//! The text of an `EPOCHNOTMATCH` error: a request routed with an outdated view of its
//! region is answered with the regions as they are now, so that the sender can fix its
//! routing cache from the error alone and retry at once.
//!
//! The node's RESP server writes it (after `-TRYAGAIN `, so a plain Redis client retries
//! it like any other transient error) and the Rust client reads it. One line:
//!
//! ```text
//! EPOCHNOTMATCH region <id>: epoch changed; now <desc> [<desc> …]
//! desc = <id> <start> <end> <version> <conf_ver> <leader>
//! ```
//!
//! Every field is separated by exactly one space. Ids, versions and the leader's node id
//! are unsigned decimals (digits only); `start` and `end` are the keys in lowercase hex,
//! `-` for an empty key (an empty `start` is the beginning of the key space, an empty `end`
//! its end); `leader` is `-` when the node does not know it. There are 1 to
//! [`DESCRIPTORS_MAX`] descriptors, in key order, none overlapping another.
//!
//! [`EpochNotMatch::parse`] accepts exactly what [`EpochNotMatch`]'s `Display` writes and
//! answers anything else with a [`ParseError`] naming what was wrong; it never panics.

use std::fmt;

use bytes::Bytes;

/// Descriptors one error carries, at most: enough for the regions a split or merge leaves
/// where one region was, while one error line stays a few KiB.
pub const DESCRIPTORS_MAX: usize = 64;

/// The word that marks the error (after `TRYAGAIN `).
pub const CODE: &str = "EPOCHNOTMATCH";

/// Fields of one descriptor in the line.
const FIELDS: usize = 6;

/// One region as it is now on the node that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDescriptor {
    /// The region's id.
    pub id: u64,
    /// First key of its range (inclusive).
    pub start_key: Bytes,
    /// End of its range (exclusive); empty: the end of the key space.
    pub end_key: Bytes,
    /// Splits and merges so far.
    pub version: u64,
    /// Membership changes so far.
    pub conf_ver: u64,
    /// The node that leads it, if the answering node knows.
    pub leader: Option<u64>,
}

/// A request for region `region_id` was routed with an epoch the region no longer has (or
/// its key is in another region now); `current` are the regions that now hold the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochNotMatch {
    /// The region the request was routed to.
    pub region_id: u64,
    /// The regions now covering the request's keys (and what the sender knew of the
    /// region), in key order.
    pub current: Vec<RouteDescriptor>,
}

/// Why a line is not a well-formed `EPOCHNOTMATCH` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed EPOCHNOTMATCH error: {0}")]
pub struct ParseError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(why.into()))
}

impl fmt::Display for EpochNotMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CODE} region {}: epoch changed; now", self.region_id)?;
        for d in &self.current {
            write!(
                f,
                " {} {} {} {} {} ",
                d.id,
                HexKey(&d.start_key),
                HexKey(&d.end_key),
                d.version,
                d.conf_ver
            )?;
            match d.leader {
                Some(n) => write!(f, "{n}")?,
                None => f.write_str("-")?,
            }
        }
        Ok(())
    }
}

/// A key in lowercase hex, `-` when empty.
struct HexKey<'a>(&'a [u8]);

impl fmt::Display for HexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An unsigned decimal: digits only (no sign, no spaces), no overflow.
fn unsigned(field: &str, what: &str) -> Result<u64, ParseError> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!("{what} {field:?} is not an unsigned decimal"));
    }
    field
        .parse()
        .or_else(|_| bad(format!("{what} {field:?} is out of range")))
}

/// A key: `-` for empty, else an even number of lowercase hex digits.
fn key(field: &str, what: &str) -> Result<Bytes, ParseError> {
    if field == "-" {
        return Ok(Bytes::new());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let raw = field.as_bytes();
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return bad(format!("{what} {field:?} is not hex of whole bytes"));
    }
    let mut out = Vec::with_capacity(raw.len() / 2);
    for pair in raw.chunks_exact(2) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return bad(format!("{what} {field:?} is not lowercase hex")),
        }
    }
    Ok(Bytes::from(out))
}

impl EpochNotMatch {
    /// Whether `message` (an error line without its leading `-` and its `TRYAGAIN `) claims
    /// to be this error: it is then parsed with [`EpochNotMatch::parse`].
    pub fn is_epoch_not_match(message: &str) -> bool {
        message
            .strip_prefix(CODE)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    }

    /// Reads `message`, the error line without its leading `-` and its `TRYAGAIN `, as
    /// written by `Display`.
    pub fn parse(message: &str) -> Result<EpochNotMatch, ParseError> {
        let Some(rest) = message
            .strip_prefix(CODE)
            .and_then(|r| r.strip_prefix(" region "))
        else {
            return bad(format!("does not start with \"{CODE} region \""));
        };
        let Some((region, list)) = rest.split_once(": epoch changed; now ") else {
            return bad("no \": epoch changed; now \" after the region id");
        };
        let region_id = unsigned(region, "region id")?;
        let fields: Vec<&str> = list.split(' ').collect();
        if fields.iter().any(|f| f.is_empty()) {
            return bad("fields must be separated by exactly one space");
        }
        if !fields.len().is_multiple_of(FIELDS) {
            return bad(format!(
                "{} fields do not make whole descriptors of {FIELDS}",
                fields.len()
            ));
        }
        let n = fields.len() / FIELDS;
        if n == 0 || n > DESCRIPTORS_MAX {
            return bad(format!("{n} descriptors (1 to {DESCRIPTORS_MAX} allowed)"));
        }
        let mut current: Vec<RouteDescriptor> = Vec::with_capacity(n);
        for f in fields.chunks_exact(FIELDS) {
            let d = RouteDescriptor {
                id: unsigned(f[0], "region id")?,
                start_key: key(f[1], "start key")?,
                end_key: key(f[2], "end key")?,
                version: unsigned(f[3], "version")?,
                conf_ver: unsigned(f[4], "conf_ver")?,
                leader: match f[5] {
                    "-" => None,
                    l => Some(unsigned(l, "leader")?),
                },
            };
            if !d.end_key.is_empty() && d.end_key <= d.start_key {
                return bad(format!("region {}: end is not after start", d.id));
            }
            if let Some(prev) = current.last() {
                // In key order and disjoint: the previous one must end, at or before this
                // one's start.
                if prev.end_key.is_empty() || prev.end_key > d.start_key {
                    return bad(format!(
                        "regions {} and {} overlap or are out of key order",
                        prev.id, d.id
                    ));
                }
            }
            current.push(d);
        }
        Ok(EpochNotMatch { region_id, current })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(id: u64, start: &[u8], end: &[u8], leader: Option<u64>) -> RouteDescriptor {
        RouteDescriptor {
            id,
            start_key: Bytes::copy_from_slice(start),
            end_key: Bytes::copy_from_slice(end),
            version: 3,
            conf_ver: 1,
            leader,
        }
    }

    fn split_of_7() -> EpochNotMatch {
        EpochNotMatch {
            region_id: 7,
            current: vec![
                desc(7, b"", &[0x00, 0x80], Some(2)),
                desc(9, &[0x00, 0x80], b"", None),
            ],
        }
    }

    #[test]
    fn the_line_reads_as_documented_and_round_trips() {
        let e = split_of_7();
        let line = e.to_string();
        assert_eq!(
            line,
            "EPOCHNOTMATCH region 7: epoch changed; now 7 - 0080 3 1 2 9 0080 - 3 1 -"
        );
        assert!(EpochNotMatch::is_epoch_not_match(&line));
        assert_eq!(EpochNotMatch::parse(&line), Ok(e));
    }

    #[test]
    fn binary_keys_and_large_numbers_round_trip() {
        let e = EpochNotMatch {
            region_id: u64::MAX,
            current: vec![
                desc(1, &[0x00], &[0xff, 0x00, b' ', b'-'], Some(u64::MAX)),
                desc(u64::MAX, &[0xff, 0x00, b' ', b'-'], &[0xff, 0xff], None),
            ],
        };
        assert_eq!(EpochNotMatch::parse(&e.to_string()), Ok(e));
    }

    #[test]
    fn malformed_lines_are_refused_with_a_reason() {
        let ok = "EPOCHNOTMATCH region 7: epoch changed; now 7 - 0080 3 1 2 9 0080 - 3 1 -";
        assert!(EpochNotMatch::parse(ok).is_ok());
        let cases = [
            ("", "does not start"),
            ("EPOCHNOTMATCH", "does not start"),
            ("EPOCHNOTMATCH region 7", "epoch changed"),
            (
                "EPOCHNOTMATCH region x: epoch changed; now 7 - - 3 1 -",
                "region id",
            ),
            (
                "EPOCHNOTMATCH region +7: epoch changed; now 7 - - 3 1 -",
                "region id",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now ",
                "exactly one space",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - - 3 1",
                "whole descriptors",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 -  - 3 1 -",
                "exactly one space",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - 008 3 1 -",
                "whole bytes",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - 00G0 3 1 -",
                "lowercase hex",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - 00AB 3 1 -",
                "lowercase hex",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - - -3 1 -",
                "version",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - - 3 99999999999999999999 -",
                "out of range",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - - 3 1 node2",
                "leader",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 0080 0010 3 1 -",
                "end is not after start",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 0080 0080 3 1 -",
                "end is not after start",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 9 0080 - 3 1 - 7 - 0080 3 1 2",
                "overlap",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - - 3 1 - 9 0080 - 3 1 -",
                "overlap",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - 0090 3 1 - 9 0080 - 3 1 -",
                "overlap",
            ),
            (
                "EPOCHNOTMATCH region 7: epoch changed; now 7 - 0080 3 1 2 9 0080 - 3 1 - ",
                "exactly one space",
            ),
        ];
        for (line, why) in cases {
            match EpochNotMatch::parse(line) {
                Ok(e) => panic!("{line:?} parsed as {e:?}"),
                Err(ParseError(msg)) => assert!(msg.contains(why), "{line:?}: {msg}"),
            }
        }
        assert!(!EpochNotMatch::is_epoch_not_match(
            "EPOCHNOTMATCHED region 7"
        ));
        assert!(!EpochNotMatch::is_epoch_not_match(
            "region 7 changed; retry"
        ));
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let many = EpochNotMatch {
            region_id: 1,
            current: (0..=DESCRIPTORS_MAX as u8)
                .map(|i| desc(u64::from(i) + 1, &[i], &[i + 1], None))
                .collect(),
        };
        let err = EpochNotMatch::parse(&many.to_string()).unwrap_err();
        assert!(err.to_string().contains("descriptors"), "{err}");
        let mut fits = many;
        fits.current.truncate(DESCRIPTORS_MAX);
        assert_eq!(EpochNotMatch::parse(&fits.to_string()), Ok(fits));
    }
}
