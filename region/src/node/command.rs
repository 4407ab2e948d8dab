//! The key-value commands a region's log carries, and their answers.

use std::sync::OnceLock;

use bytes::Bytes;
use flotilla_common::codec::{self, CodecError};
use serde::{Deserialize, Serialize};

/// When a put takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PutCondition {
    /// Always.
    #[default]
    Always,
    /// Only if the key does not exist (SET NX).
    IfAbsent,
    /// Only if the key exists (SET XX).
    IfPresent,
}

/// A write to a region's state machine. Every key must be in the region's range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set a key.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// When.
        cond: PutCondition,
    },
    /// Remove keys.
    Delete {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Add `delta` to the decimal integer stored at `key` (0 if absent).
    IncrBy {
        /// The key.
        key: Bytes,
        /// The amount.
        delta: i64,
    },
    /// Set several keys at once.
    BatchPut {
        /// The pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Split the region (an admin command): it keeps the keys before `split_keys[0]`;
    /// region `new_region_ids[i]` gets `split_keys[i]..split_keys[i + 1]` (the last one up
    /// to the old end), with a replica on every node of the old region. The keys must be
    /// ascending and strictly inside the region.
    Split {
        /// Where the new regions start.
        split_keys: Vec<Bytes>,
        /// Their ids, unique in the cluster.
        new_region_ids: Vec<u64>,
    },
    /// Freeze the region for a merge into `target` (an admin command; see the merge
    /// module): it applies no data command from here on.
    PrepareMerge {
        /// The region to merge into.
        target: u64,
    },
    /// Take in the adjacent `source` region, prepared at `prepare_index` (an admin
    /// command applied in the target).
    CommitMerge {
        /// The source's descriptor, as prepared.
        source: super::descriptor::RegionDescriptor,
        /// The source's `PrepareMerge` index.
        prepare_index: u64,
    },
    /// Unfreeze a region whose merge was refused by its target.
    RollbackMerge,
}

impl KvCommand {
    /// The keys this command writes.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            KvCommand::Put { key, .. } | KvCommand::IncrBy { key, .. } => vec![key.as_ref()],
            KvCommand::Delete { keys } => keys.iter().map(|k| k.as_ref()).collect(),
            KvCommand::BatchPut { pairs } => pairs.iter().map(|(k, _)| k.as_ref()).collect(),
            KvCommand::Split { .. }
            | KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge { .. }
            | KvCommand::RollbackMerge => Vec::new(),
        }
    }

    /// Whether every key the command writes satisfies `f` (without collecting them).
    pub fn all_keys(&self, mut f: impl FnMut(&[u8]) -> bool) -> bool {
        match self {
            KvCommand::Put { key, .. } | KvCommand::IncrBy { key, .. } => f(key),
            KvCommand::Delete { keys } => keys.iter().all(|k| f(k)),
            KvCommand::BatchPut { pairs } => pairs.iter().all(|(k, _)| f(k)),
            KvCommand::Split { .. }
            | KvCommand::PrepareMerge { .. }
            | KvCommand::CommitMerge { .. }
            | KvCommand::RollbackMerge => true,
        }
    }

    /// Encodes for a log entry (inside a session command).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).expect("a command always encodes")
    }

    /// Decodes from a log entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

/// What a command did, as the state machine answers it (and stores it for retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// A put: whether it was written (conditions may refuse it).
    Written(bool),
    /// A delete: how many keys existed.
    Deleted(u64),
    /// An increment: the new value.
    Value(i64),
    /// A batch put: done.
    Done,
    /// The command could not be applied (for example INCR on a non-integer).
    Failed(String),
    /// A split: the regions it created.
    Split(Vec<u64>),
}

/// The answers most writes get, encoded once ([`KvResponse::encode`]).
const COMMON_ANSWERS: [KvResponse; 5] = [
    KvResponse::Written(true),
    KvResponse::Written(false),
    KvResponse::Done,
    KvResponse::Deleted(0),
    KvResponse::Deleted(1),
];

impl KvResponse {
    /// Encodes for the session table. The common answers (a put's, a batch's, a delete of
    /// one key) come from encodings made once, which cost no allocation to hand out,
    /// clone or drop: the session table keeps every client's last answer, and a fresh
    /// buffer per write was an allocation and a free on the apply path.
    pub fn encode(&self) -> Bytes {
        static ENCODED: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        match COMMON_ANSWERS.iter().position(|a| a == self) {
            Some(i) => {
                let all = ENCODED.get_or_init(|| {
                    COMMON_ANSWERS
                        .iter()
                        .map(|a| codec::encode(a).expect("a response always encodes"))
                        .collect()
                });
                Bytes::from_static(all[i].as_slice())
            }
            None => Bytes::from(codec::encode(self).expect("a response always encodes")),
        }
    }

    /// Decodes from the session table.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_encode_as_the_codec_does_and_decode_back() {
        let mut answers = COMMON_ANSWERS.to_vec();
        answers.extend([
            KvResponse::Deleted(7),
            KvResponse::Value(-3),
            KvResponse::Failed("no".into()),
            KvResponse::Split(vec![4, 5]),
        ]);
        for a in answers {
            let encoded = a.encode();
            assert_eq!(
                encoded.as_ref(),
                codec::encode(&a).expect("encodes"),
                "{a:?}"
            );
            assert_eq!(KvResponse::decode(&encoded).expect("decodes"), a);
            // Twice: the common ones come from the encodings made once.
            assert_eq!(a.encode(), encoded, "{a:?}");
        }
    }
}
