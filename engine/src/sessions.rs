//! Client sessions in the `meta` column family, written as a log per region.
//!
//! A session record (opaque bytes, one per client of a region) changes on every write the
//! region applies. One RocksDB key per change doubled the memtable inserts of a write — the
//! most expensive part of applying it (docs/benchmarks.md, "Where a write's time goes").
//! Instead a round writes, per region, one record holding all the sessions it changed:
//!
//! - `t` + region id + sequence → `[(client id, session)]`: the session log, in sequence
//!   order (the store's RocksDB sequence number when the round was written, so later rounds
//!   sort after earlier ones, across restarts too);
//! - `u` + region id → `[(client id, session)]`: the folded base, every session of the
//!   region as of the last fold;
//! - `s` + region id + client id → session: one record per client, as older versions of the
//!   store wrote them; still read, and removed by the next fold.
//!
//! A region's sessions are the base with the log replayed over it. Once the log holds more
//! bytes than the base (and at least [`FOLD_MIN_BYTES`]), [`KvStore::sessions_fold_due`]
//! says so, and the caller's next round carries every session of the region
//! ([`crate::ApplyRound::set_all_sessions`]): that round writes them as the new base and
//! deletes the log records with one range deletion, in the same WriteBatch as the round's
//! data. Each byte of session log is so rewritten at most about twice.
//!
//! The caller (the store) holds every region's sessions in memory anyway, to recognise
//! retries, so a fold reads nothing back and the engine keeps only byte counts per
//! region ([`LogState`]). Reading the base and each log record back, and deleting each
//! record with its own tombstone, had made a region's session record cost three memtable
//! operations instead of one; keeping a second merged copy of every session here cost a
//! map insert and a free per write (docs/benchmarks.md).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use flotilla_common::codec;
use rocksdb::{Direction, IteratorMode, ReadOptions, Snapshot, WriteBatch};

use crate::error::{EngineError, Result};
use crate::kv::{self, KvStore, CF_META};

const LOG_PREFIX: u8 = b't';
const BASE_PREFIX: u8 = b'u';

/// A region's log is folded once it holds more bytes than the base, and at least this many.
pub(crate) const FOLD_MIN_BYTES: usize = 8 << 10;

/// A region's sessions by client id.
pub(crate) type SessionMap = BTreeMap<u64, Bytes>;

fn log_key(region_id: u64, seq: u64) -> [u8; 17] {
    let mut k = [0; 17];
    k[..9].copy_from_slice(&kv::meta_key(LOG_PREFIX, region_id));
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn log_bounds(region_id: u64) -> ([u8; 17], [u8; 17]) {
    (
        log_key(region_id, 0),
        log_key(region_id.saturating_add(1), 0),
    )
}

fn base_key(region_id: u64) -> [u8; 9] {
    kv::meta_key(BASE_PREFIX, region_id)
}

/// What the store knows of a region's session records without reading them.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogState {
    /// Bytes of session log records.
    log_bytes: usize,
    /// Bytes of the folded base.
    base_bytes: usize,
    /// Whether per-client records of the old layout may exist.
    legacy: bool,
}

/// The per-region [`LogState`]s, filled on first use after the store opens.
#[derive(Debug, Default)]
pub(crate) struct SessionLogs {
    regions: HashMap<u64, LogState>,
}

/// What a written round changed in a region's [`LogState`].
#[derive(Debug)]
pub(crate) enum LogChange {
    /// A log record of `bytes` was added.
    Appended { bytes: usize },
    /// The log was folded into a base of `base_bytes`.
    Folded { base_bytes: usize },
}

impl LogState {
    /// Whether the log has outgrown the base (and [`FOLD_MIN_BYTES`]).
    fn fold_due(&self) -> bool {
        self.log_bytes >= FOLD_MIN_BYTES.max(self.base_bytes)
    }
}

impl SessionLogs {
    /// Records the changes [`KvStore::write_sessions`] returned, once their batch is
    /// written.
    pub(crate) fn written(&mut self, changes: Vec<(u64, LogChange)>) {
        for (region, change) in changes {
            let state = self.regions.entry(region).or_default();
            match change {
                LogChange::Appended { bytes } => state.log_bytes += bytes,
                LogChange::Folded { base_bytes } => {
                    *state = LogState {
                        base_bytes,
                        ..LogState::default()
                    }
                }
            }
        }
    }

    /// Forgets a region's state (its records were replaced or removed).
    pub(crate) fn forget(&mut self, region_id: u64) {
        self.regions.remove(&region_id);
    }
}

/// One region's session records, read in key order.
struct Records {
    legacy: Vec<(u64, Bytes)>,
    base: Option<Bytes>,
    log: Vec<(Vec<u8>, Bytes)>,
}

impl Records {
    /// The sessions they describe: the old per-client records, then the base, then the
    /// log in order, each overriding the one before.
    fn merged(&self, path: &std::path::Path) -> Result<SessionMap> {
        let mut out: SessionMap = self.legacy.iter().cloned().collect();
        let corrupt = |reason: String| EngineError::Corruption {
            file: path.to_path_buf(),
            offset: 0,
            reason,
        };
        if let Some(base) = &self.base {
            let list: Vec<(u64, Bytes)> =
                codec::decode(base).map_err(|e| corrupt(format!("session base: {e}")))?;
            out.extend(list);
        }
        for (_, value) in &self.log {
            let list: Vec<(u64, Bytes)> =
                codec::decode(value).map_err(|e| corrupt(format!("session log record: {e}")))?;
            out.extend(list);
        }
        Ok(out)
    }

    /// The state of the region these records describe.
    fn state(&self) -> LogState {
        LogState {
            log_bytes: self.log.iter().map(|(_, v)| v.len()).sum(),
            base_bytes: self.base.as_ref().map_or(0, |b| b.len()),
            legacy: !self.legacy.is_empty(),
        }
    }
}

impl KvStore {
    /// Reads a region's session records, at `snapshot` if given.
    fn session_records(&self, region_id: u64, snapshot: Option<&Snapshot<'_>>) -> Result<Records> {
        let meta = self.cf(CF_META)?;
        let read_opts = |upper: &[u8]| {
            let mut opts = ReadOptions::default();
            opts.set_iterate_upper_bound(upper.to_vec());
            if let Some(s) = snapshot {
                opts.set_snapshot(s);
            }
            opts
        };
        let (lower, upper) = kv::session_bounds(region_id);
        let mut legacy = Vec::new();
        for item in self.db.iterator_cf_opt(
            meta,
            read_opts(&upper),
            IteratorMode::From(&lower, Direction::Forward),
        ) {
            let (key, value) = item?;
            let client = kv::u64_at(&key, 9).ok_or_else(|| EngineError::Corruption {
                file: self.path().to_path_buf(),
                offset: 0,
                reason: format!("session key of {} bytes", key.len()),
            })?;
            legacy.push((client, Bytes::from(value.into_vec())));
        }
        let base = match snapshot {
            Some(s) => s.get_cf(meta, base_key(region_id))?,
            None => self.db.get_cf(meta, base_key(region_id))?,
        }
        .map(Bytes::from);
        let (lower, upper) = log_bounds(region_id);
        let mut log = Vec::new();
        for item in self.db.iterator_cf_opt(
            meta,
            read_opts(&upper),
            IteratorMode::From(&lower, Direction::Forward),
        ) {
            let (key, value) = item?;
            log.push((key.into_vec(), Bytes::from(value.into_vec())));
        }
        Ok(Records { legacy, base, log })
    }

    /// A region's sessions, at `snapshot` if given.
    pub(crate) fn sessions_at(
        &self,
        region_id: u64,
        snapshot: Option<&Snapshot<'_>>,
    ) -> Result<SessionMap> {
        self.session_records(region_id, snapshot)?
            .merged(self.path())
    }

    /// The region's session state, read from its records on first use.
    fn log_state<'a>(&self, logs: &'a mut SessionLogs, region_id: u64) -> Result<&'a LogState> {
        Ok(match logs.regions.entry(region_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.session_records(region_id, None)?.state()),
        })
    }

    /// Whether the region's session log has outgrown its base, so that the next round
    /// changing its sessions should fold them: carry every session of the region with
    /// [`crate::ApplyRound::set_all_sessions`]. Reads the region's records on its first
    /// call after the store opened.
    pub fn sessions_fold_due(&self, region_id: u64) -> Result<bool> {
        let mut logs = self.session_logs.lock();
        Ok(self.log_state(&mut logs, region_id)?.fold_due())
    }

    /// Adds the sessions one apply round changed (`(region, client, session)`, sorted by
    /// region and client, one per client) to `wb`: one log record per region, except for
    /// the regions `all` gives every session of (sorted by region), which are folded into
    /// a new base (those sessions with the round's changes over them). `seq` orders this
    /// round's log records after every earlier round's. Returns the regions' changes for
    /// [`SessionLogs::written`], once `wb` is written.
    pub(crate) fn write_sessions(
        &self,
        wb: &mut WriteBatch,
        logs: &mut SessionLogs,
        changed: &[(u64, u64, &Bytes)],
        all: &[(u64, &[(u64, Bytes)])],
        seq: u64,
    ) -> Result<Vec<(u64, LogChange)>> {
        let mut changes = Vec::new();
        let meta = self.cf(CF_META)?;
        let mut rest = changed;
        let mut folds = all.iter().peekable();
        while !rest.is_empty() || folds.peek().is_some() {
            // The next region in order, of either list.
            let region = match (rest.first(), folds.peek()) {
                (Some(c), Some(f)) => c.0.min(f.0),
                (Some(c), None) => c.0,
                (None, Some(f)) => f.0,
                (None, None) => break,
            };
            let n = rest.iter().take_while(|(r, _, _)| *r == region).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let state = self.log_state(logs, region)?;
            let mut every = None;
            while let Some((_, list)) = folds.next_if(|(r, _)| *r == region) {
                every = Some(*list);
            }
            let Some(every) = every else {
                let list: Vec<(u64, &Bytes)> = group.iter().map(|(_, c, s)| (*c, *s)).collect();
                let record = codec::encode(&list)?;
                wb.put_cf(meta, log_key(region, seq), &record);
                changes.push((
                    region,
                    LogChange::Appended {
                        bytes: record.len(),
                    },
                ));
                continue;
            };
            // Fold: every session, with this round's changes over them, in one record; the
            // log records (all older than `seq`) go in one range deletion.
            let mut sessions: BTreeMap<u64, &Bytes> = every.iter().map(|(c, s)| (*c, s)).collect();
            for (_, client, session) in group {
                sessions.insert(*client, *session);
            }
            let base: Vec<(u64, &Bytes)> = sessions.into_iter().collect();
            let base = codec::encode(&base)?;
            let (lower, _) = log_bounds(region);
            wb.delete_range_cf(meta, lower, log_key(region, seq));
            if state.legacy {
                let (lower, upper) = kv::session_bounds(region);
                wb.delete_range_cf(meta, lower, upper);
            }
            wb.put_cf(meta, base_key(region), &base);
            changes.push((
                region,
                LogChange::Folded {
                    base_bytes: base.len(),
                },
            ));
        }
        Ok(changes)
    }

    /// Adds to `wb` the deletion of every session record of the region.
    pub(crate) fn delete_sessions(&self, wb: &mut WriteBatch, region_id: u64) -> Result<()> {
        let meta = self.cf(CF_META)?;
        let (lower, upper) = kv::session_bounds(region_id);
        wb.delete_range_cf(meta, lower, upper);
        let (lower, upper) = log_bounds(region_id);
        wb.delete_range_cf(meta, lower, upper);
        wb.delete_cf(meta, base_key(region_id));
        Ok(())
    }

    /// Adds to `wb` the region's sessions as its whole session state (after
    /// [`KvStore::delete_sessions`] in the same batch).
    pub(crate) fn put_session_base(
        &self,
        wb: &mut WriteBatch,
        region_id: u64,
        sessions: &[(u64, Bytes)],
    ) -> Result<()> {
        let meta = self.cf(CF_META)?;
        wb.put_cf(meta, base_key(region_id), codec::encode(&sessions)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RocksConfig;
    use crate::kv::ApplyRound;

    fn open(dir: &std::path::Path) -> KvStore {
        KvStore::open(dir, &RocksConfig::default()).expect("open")
    }

    fn session(n: u64) -> Vec<u8> {
        format!("session {n}").into_bytes()
    }

    fn as_bytes(map: &BTreeMap<u64, Vec<u8>>) -> Vec<(u64, Bytes)> {
        map.iter()
            .map(|(c, s)| (*c, Bytes::from(s.clone())))
            .collect()
    }

    /// A model of what the sessions must read back as, checked after every round, through
    /// many folds, across a reopen, for several regions. The folds are given the sessions
    /// before the round (region 1; the round's changes are laid over them), after it
    /// (region 2), or in rounds that change none (region 3); region 4 is never given
    /// them, and its log only grows.
    #[test]
    fn sessions_read_back_through_logs_and_folds_and_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut model: HashMap<u64, BTreeMap<u64, Vec<u8>>> = HashMap::new();
        let mut kv = open(dir.path());
        let mut index = 0;
        let mut folds: HashMap<u64, usize> = HashMap::new();
        for round_no in 0..400u64 {
            let mut round = ApplyRound::new();
            index += 1;
            for region in 1..=4u64 {
                round.set_applied(region, index);
                // Region 1: few clients (folds from the log size); region 2: many (a large
                // base); region 3: written every other round.
                let clients = match region {
                    1 | 4 => 5,
                    2 => 300,
                    _ if round_no % 2 == 0 => 0,
                    _ => 40,
                };
                let due = region != 4 && kv.sessions_fold_due(region).expect("due");
                if due && region != 2 {
                    round.set_all_sessions(region, as_bytes(model.entry(region).or_default()));
                }
                for i in 0..clients.min(20) {
                    let client = (round_no * 7 + i * 13) % clients;
                    let s = session(round_no * 1000 + i);
                    round.set_session(region, client, s.clone());
                    model.entry(region).or_default().insert(client, s);
                }
                if due && region == 2 {
                    round.set_all_sessions(region, as_bytes(&model[&region]));
                }
                if due {
                    *folds.entry(region).or_default() += 1;
                }
            }
            kv.apply(round).expect("apply");
            if round_no == 250 {
                drop(kv);
                kv = open(dir.path());
            }
            if round_no % 37 == 0 || round_no == 399 {
                for region in 1..=4u64 {
                    let got: BTreeMap<u64, Vec<u8>> =
                        kv.sessions(region).expect("sessions").into_iter().collect();
                    assert_eq!(
                        got,
                        model.get(&region).cloned().unwrap_or_default(),
                        "region {region} after round {round_no}"
                    );
                }
            }
        }
        for region in 1..=3u64 {
            assert!(
                folds.get(&region).copied().unwrap_or(0) >= 2,
                "region {region}: {folds:?}"
            );
            // The log stayed bounded: the folds happened.
            let records = kv.session_records(region, None).expect("records");
            assert!(records.base.is_some(), "region {region} was never folded");
            let log_bytes: usize = records.log.iter().map(|(_, v)| v.len()).sum();
            let bound = FOLD_MIN_BYTES.max(records.base.map_or(0, |b| b.len()));
            assert!(
                log_bytes <= 2 * bound,
                "region {region}'s log holds {log_bytes} bytes"
            );
        }
        let records = kv.session_records(4, None).expect("records");
        assert!(
            records.base.is_none(),
            "region 4 was folded without its sessions"
        );
        assert_eq!(records.log.len(), 400);
    }

    #[test]
    fn one_session_and_a_removed_region_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = open(dir.path());
        let mut round = ApplyRound::new();
        round.set_applied(9, 1);
        round.set_session(9, 4, session(1));
        round.set_session(9, 4, session(2));
        kv.apply(round).expect("apply");
        assert_eq!(kv.session(9, 4).expect("read"), Some(session(2)));
        assert_eq!(kv.session(9, 5).expect("read"), None);
        let mut round = ApplyRound::new();
        round.remove_region(9);
        kv.apply(round).expect("apply");
        assert!(kv.sessions(9).expect("read").is_empty());
        // A region used again after its removal starts empty and folds from nothing.
        let mut round = ApplyRound::new();
        round.set_applied(9, 1);
        round.set_session(9, 6, session(3));
        kv.apply(round).expect("apply");
        assert_eq!(kv.sessions(9).expect("read"), vec![(6, session(3))]);
    }

    /// Records of the old layout (one key per client) are read, and replaced by a fold.
    #[test]
    fn old_per_client_records_are_read_and_folded_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = open(dir.path());
        let meta = kv.cf(CF_META).expect("cf");
        for client in 0..100u64 {
            kv.db
                .put_cf(meta, kv::session_key(2, client), session(client))
                .expect("put");
        }
        let mut round = ApplyRound::new();
        round.set_applied(2, 1);
        round.set_session(2, 7, session(700));
        kv.apply(round).expect("apply");
        let got: BTreeMap<u64, Vec<u8>> = kv.sessions(2).expect("read").into_iter().collect();
        assert_eq!(got.len(), 100);
        assert_eq!(got[&7], session(700));
        assert_eq!(got[&8], session(8));
        // Enough log to fold: the old records go.
        let mut model = got;
        let mut folded = false;
        for i in 0..2000u64 {
            let mut round = ApplyRound::new();
            round.set_applied(2, 2 + i);
            if kv.sessions_fold_due(2).expect("due") {
                round.set_all_sessions(2, as_bytes(&model));
                folded = true;
            }
            round.set_session(2, i % 50, session(10_000 + i));
            model.insert(i % 50, session(10_000 + i));
            kv.apply(round).expect("apply");
        }
        assert!(folded);
        let records = kv.session_records(2, None).expect("records");
        assert!(!records.state().legacy);
        let got: BTreeMap<u64, Vec<u8>> = kv.sessions(2).expect("read").into_iter().collect();
        assert_eq!(got.len(), 100);
        assert_eq!(got[&49], session(10_000 + 1999));
        assert_eq!(got[&99], session(99));
    }
}
