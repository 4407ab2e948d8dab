//! What a client call can fail with, and how a server's error reply is read.

use std::sync::Arc;

use flotilla_common::epoch_not_match::EpochNotMatch;

/// Why a client call failed.
///
/// Retryable conditions (no leader yet, a leader moved, a region split, a broken
/// connection) are retried inside the call until its timeout; what comes back here is
/// either something retrying cannot fix or the call running out of time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The call did not succeed within its timeout. A write that timed out may or may not
    /// have been applied (if it was, it was applied once).
    #[error("timed out after {attempts} attempt(s){}", last_failure(.last))]
    Timeout {
        /// Requests sent before giving up.
        attempts: u32,
        /// The last retryable failure seen, if any.
        last: Option<String>,
    },
    /// The call timed out while the region's replicas kept answering that they do not lead
    /// it (an election that did not finish in time, or a leader the client cannot reach).
    #[error("region {region}: no leader answered in time")]
    NoLeader {
        /// The region.
        region: u64,
    },
    /// The server refused the request for a reason retrying will not change (`WRONGTYPE`,
    /// a value that is not an integer, an overflow, a full store): the whole error line.
    #[error("server error: {0}")]
    Server(String),
    /// A node could not be reached, or its connection broke.
    #[error("connection to {addr}: {source}")]
    Connection {
        /// The node's client address.
        addr: String,
        /// What went wrong.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The server sent something that is not the expected answer (bad bytes, a reply above
    /// the client's limits, a reply of the wrong type).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client was configured in a way it cannot work with.
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn last_failure(last: &Option<String>) -> String {
    last.as_ref()
        .map_or_else(String::new, |l| format!("; last failure: {l}"))
}

impl ClientError {
    /// A connection failure at `addr`.
    pub(crate) fn connection(addr: &str, source: std::io::Error) -> ClientError {
        ClientError::Connection {
            addr: addr.to_string(),
            source: Arc::new(source),
        }
    }

    /// Whether the same request may succeed when sent again (to the same or another node).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Connection { .. })
    }
}

/// How the client reacts to a server's error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerFailure {
    /// The replica asked does not lead `region`; the leader is on `leader` if known.
    NotLeader {
        /// The region.
        region: u64,
        /// The node hosting its leader, if the replica knew.
        leader: Option<u64>,
    },
    /// The request's route was stale (`-TRYAGAIN EPOCHNOTMATCH …`): the regions as they are
    /// now, to put in the cache before sending it again.
    EpochNotMatch(EpochNotMatch),
    /// Anything else the server says may work when retried (`-TRYAGAIN …`: an election,
    /// a region that changed, a timeout inside the node).
    Retry(String),
    /// Final: the request itself is at fault.
    Fatal(String),
}

/// Reads an error line (without the leading `-`).
///
/// The node renders a request that reached a non-leader as
/// `TRYAGAIN region 7: not leader (leader on node 2); retry`; every other `TRYAGAIN` is a
/// transient condition. `ERR max number of clients reached` is an overloaded node, also
/// transient. `TRYAGAIN EPOCHNOTMATCH …` carries the current regions; one that does not
/// parse is retried like any other `TRYAGAIN` (the client then refreshes its whole map).
/// Everything else is final.
pub(crate) fn classify(line: &str) -> ServerFailure {
    if let Some(rest) = line.strip_prefix("TRYAGAIN") {
        let message = rest.trim_start();
        if EpochNotMatch::is_epoch_not_match(message) {
            return match EpochNotMatch::parse(message) {
                Ok(e) => ServerFailure::EpochNotMatch(e),
                Err(e) => ServerFailure::Retry(format!("{line} ({e})")),
            };
        }
        return match not_leader(rest) {
            Some((region, leader)) => ServerFailure::NotLeader { region, leader },
            None => ServerFailure::Retry(line.to_string()),
        };
    }
    if line.starts_with("ERR max number of clients") {
        return ServerFailure::Retry(line.to_string());
    }
    ServerFailure::Fatal(line.to_string())
}

/// ` region 7: not leader (leader on node 2); retry` → `(7, Some(2))`.
fn not_leader(rest: &str) -> Option<(u64, Option<u64>)> {
    let after_region = rest.trim_start().strip_prefix("region ")?;
    let (region, tail) = after_region.split_once(':')?;
    let region = region.trim().parse().ok()?;
    let tail = tail.trim_start().strip_prefix("not leader")?;
    let leader = tail
        .split_once("(leader on node ")
        .and_then(|(_, n)| n.split_once(')'))
        .and_then(|(n, _)| n.trim().parse().ok());
    Some((region, leader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_leader_with_and_without_a_hint() {
        assert_eq!(
            classify("TRYAGAIN region 7: not leader (leader on node 2); retry"),
            ServerFailure::NotLeader {
                region: 7,
                leader: Some(2)
            }
        );
        assert_eq!(
            classify("TRYAGAIN region 12: not leader; retry"),
            ServerFailure::NotLeader {
                region: 12,
                leader: None
            }
        );
    }

    #[test]
    fn other_tryagain_is_retried_and_the_rest_is_final() {
        assert_eq!(
            classify("TRYAGAIN region 3 changed; retry"),
            ServerFailure::Retry("TRYAGAIN region 3 changed; retry".into())
        );
        assert_eq!(
            classify("TRYAGAIN request timed out"),
            ServerFailure::Retry("TRYAGAIN request timed out".into())
        );
        assert_eq!(
            classify("TRYAGAIN region x: not leader"),
            ServerFailure::Retry("TRYAGAIN region x: not leader".into())
        );
        assert!(matches!(
            classify("ERR max number of clients reached"),
            ServerFailure::Retry(_)
        ));
        assert_eq!(
            classify("ERR value is not an integer or out of range"),
            ServerFailure::Fatal("ERR value is not an integer or out of range".into())
        );
        assert!(matches!(
            classify("WRONGTYPE Operation against a key"),
            ServerFailure::Fatal(_)
        ));
    }

    #[test]
    fn epoch_not_match_carries_the_regions_and_a_bad_one_is_a_plain_retry() {
        let line =
            "TRYAGAIN EPOCHNOTMATCH region 7: epoch changed; now 7 - 0080 3 1 2 9 0080 - 3 1 -";
        match classify(line) {
            ServerFailure::EpochNotMatch(e) => {
                assert_eq!(e.region_id, 7);
                assert_eq!(e.current.len(), 2);
                assert_eq!(e.current[1].id, 9);
                assert_eq!(e.current[1].start_key.as_ref(), &[0x00, 0x80]);
                assert_eq!(e.current[0].leader, Some(2));
            }
            other => panic!("{other:?}"),
        }
        let bad = "TRYAGAIN EPOCHNOTMATCH region 7: epoch changed; now 7 - 0080 3 1";
        match classify(bad) {
            ServerFailure::Retry(why) => {
                assert!(why.contains("malformed EPOCHNOTMATCH"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeout_names_the_last_failure() {
        let e = ClientError::Timeout {
            attempts: 3,
            last: Some("TRYAGAIN x".into()),
        };
        assert_eq!(
            e.to_string(),
            "timed out after 3 attempt(s); last failure: TRYAGAIN x"
        );
    }
}
