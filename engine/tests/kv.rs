//! The key-value store: apply rounds carry the applied index, permits need durability,
//! and a region snapshot taken under concurrent writes installs to an identical copy.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{open_kv, small_rocks};
use flotilla_engine::{ApplyRound, EngineError, KeyRange, KvStore, SnapshotChunk, SnapshotHeader};

const KEYS: u64 = 1500;

fn key(k: u64) -> Vec<u8> {
    format!("key{k:05}").into_bytes()
}

/// Round `v` writes key `v % KEYS` of region 1 (range "key".."kez") with a 1 KiB value
/// naming `v`, and a key of region 2 outside that range.
fn round(v: u64) -> ApplyRound {
    let mut r = ApplyRound::new();
    let mut value = format!("v{v}:").into_bytes();
    value.resize(1024, b'.');
    r.put(1, key(v % KEYS), value);
    r.put(2, format!("zzz{v}").into_bytes(), b"other region".to_vec());
    r.set_applied(1, v);
    r.set_applied(2, v);
    if v.is_multiple_of(100) {
        r.set_session(1, v / 100, format!("session at {v}").into_bytes());
    }
    r
}

/// Region 1's data after rounds 1..=n.
fn expected(n: u64) -> BTreeMap<Bytes, Bytes> {
    let mut m = BTreeMap::new();
    for v in 1..=n {
        let mut value = format!("v{v}:").into_bytes();
        value.resize(1024, b'.');
        m.insert(Bytes::from(key(v % KEYS)), Bytes::from(value));
    }
    m
}

fn region_range() -> KeyRange {
    KeyRange::new(&b"key"[..], &b"kez"[..])
}

#[test]
fn a_snapshot_under_concurrent_writes_installs_an_identical_copy() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(open_kv(dir.path()));
    let mut setup = ApplyRound::new();
    setup.set_descriptor(1, b"region 1 descriptor".to_vec());
    setup.set_applied(1, 0);
    source.apply(setup).unwrap();
    for v in 1..=KEYS {
        source.apply(round(v)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (source, stop) = (source.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut v = KEYS;
            while !stop.load(Ordering::Relaxed) && v < KEYS * 4 {
                v += 1;
                source.apply(round(v)).unwrap();
            }
            v
        })
    };
    // Let the writer get going, then snapshot while it writes.
    while source.applied_index(1) < KEYS + 50 {
        std::thread::yield_now();
    }
    let stream = source.snapshot_region(1, region_range()).unwrap();
    // What goes over the wire: the header and chunks as bytes.
    let header_bytes = stream.header().encode().unwrap();
    let chunk_bytes: Vec<Vec<u8>> = stream.map(|c| c.unwrap().encode().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let last_written = writer.join().unwrap();
    let header = SnapshotHeader::decode(&header_bytes).unwrap();
    let n = header.applied_index;
    assert!(
        n > KEYS && n <= last_written,
        "snapshot at {n}, writer reached {last_written}"
    );
    assert!(
        chunk_bytes.len() >= 2,
        "1.5 MB of data should take several chunks"
    );
    assert_eq!(
        header.descriptor.as_deref(),
        Some(&b"region 1 descriptor"[..])
    );
    assert_eq!(header.sessions.len() as u64, n / 100);

    // The follower has stale data in the range and unrelated data outside it.
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = KvStore::open(follower_dir.path(), &small_rocks()).unwrap();
    let mut stale = ApplyRound::new();
    stale.put(1, b"key99999".to_vec(), b"stale".to_vec());
    stale.put(3, b"aaa".to_vec(), b"outside".to_vec());
    stale.set_applied(1, 3);
    stale.set_applied(3, 1);
    follower.apply(stale).unwrap();
    let chunks = chunk_bytes.iter().map(|b| SnapshotChunk::decode(b));
    let permit = follower.install_snapshot(&header, chunks).unwrap();
    assert_eq!(permit.durable_applied(), n);

    let installed: BTreeMap<Bytes, Bytes> = follower
        .scan(&region_range(), usize::MAX)
        .unwrap()
        .into_iter()
        .collect();
    let want = expected(n);
    let differing: Vec<String> = want
        .iter()
        .filter(|(k, v)| installed.get(*k) != Some(*v))
        .map(|(k, v)| {
            let show = |b: &Bytes| String::from_utf8_lossy(&b[..b.len().min(8)]).into_owned();
            format!(
                "{}: want {} got {:?}",
                show(k),
                show(v),
                installed.get(k).map(show)
            )
        })
        .take(5)
        .collect();
    assert!(
        differing.is_empty() && installed.len() == want.len(),
        "installed copy differs from the source at index {n} ({} keys, want {}): {differing:?}",
        installed.len(),
        want.len()
    );
    assert_eq!(
        follower.get(b"aaa").unwrap().as_deref(),
        Some(&b"outside"[..])
    );
    assert_eq!(follower.applied_index(1), n);
    assert_eq!(follower.durable_applied_index(1), n);
    assert_eq!(
        follower.descriptor(1).unwrap().as_deref(),
        Some(&b"region 1 descriptor"[..])
    );
    assert_eq!(
        follower.session(1, 1).unwrap().as_deref(),
        Some(&b"session at 100"[..])
    );
    // Nothing of region 2 came along.
    assert!(follower
        .scan(&KeyRange::new(&b"zzz"[..], Bytes::new()), usize::MAX)
        .unwrap()
        .is_empty());
    drop(follower);
    let reopened = KvStore::open(follower_dir.path(), &small_rocks()).unwrap();
    assert_eq!(reopened.applied_index(1), n);
    assert_eq!(
        reopened.scan(&region_range(), usize::MAX).unwrap().len(),
        expected(n).len()
    );
}

#[test]
fn an_apply_round_must_record_every_touched_region() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    let mut r = ApplyRound::new();
    r.put(1, b"a".to_vec(), b"1".to_vec());
    r.put(2, b"b".to_vec(), b"2".to_vec());
    r.set_applied(1, 5);
    assert!(matches!(
        kv.apply(r),
        Err(EngineError::InvalidBatch { region_id: 2, .. })
    ));
    assert_eq!(
        kv.get(b"a").unwrap(),
        None,
        "a refused round writes nothing"
    );
    let mut r = ApplyRound::new();
    r.put(1, b"a".to_vec(), b"1".to_vec());
    r.set_applied(1, 5);
    kv.apply(r).unwrap();
    let mut back = ApplyRound::new();
    back.set_applied(1, 4);
    assert!(kv.apply(back).is_err(), "the applied index never goes back");
}

#[test]
fn a_permit_needs_the_applied_index_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open_kv(dir.path());
        let mut r = ApplyRound::new();
        r.put(1, b"a".to_vec(), b"1".to_vec());
        r.set_applied(1, 10);
        kv.apply(r).unwrap();
        assert_eq!(kv.applied_index(1), 10);
        assert_eq!(
            kv.durable_applied_index(1),
            0,
            "an apply round is not synced"
        );
        assert!(matches!(
            kv.compaction_permit(1, 11),
            Err(EngineError::CompactionAheadOfApplied { applied: 10, .. })
        ));
        let permit = kv.compaction_permit(1, 8).unwrap();
        assert_eq!(permit.durable_applied(), 10);
        assert_eq!(kv.durable_applied_index(1), 10, "the permit synced first");
    }
    let kv = open_kv(dir.path());
    assert_eq!(kv.applied_index(1), 10);
    assert_eq!(kv.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

/// A round may write a key several times, in any key order: the last write of each key
/// wins (the store sorts a round's writes by key before inserting them), and so does the
/// last session record of each client.
#[test]
fn the_last_write_of_a_key_in_a_round_wins() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    let mut r = ApplyRound::new();
    r.put(1, b"b".to_vec(), b"b1".to_vec());
    r.put(1, b"a".to_vec(), b"a1".to_vec());
    r.delete(1, b"b".to_vec());
    r.put(1, b"c".to_vec(), b"c1".to_vec());
    r.put(1, b"b".to_vec(), b"b2".to_vec());
    r.put(1, b"a".to_vec(), b"a2".to_vec());
    r.delete(1, b"c".to_vec());
    r.set_session(1, 9, b"first".to_vec());
    r.set_session(1, 3, b"other".to_vec());
    r.set_session(1, 9, b"last".to_vec());
    r.set_applied(1, 1);
    kv.apply(r).unwrap();
    assert_eq!(kv.get(b"a").unwrap(), Some(b"a2".to_vec()));
    assert_eq!(kv.get(b"b").unwrap(), Some(b"b2".to_vec()));
    assert_eq!(kv.get(b"c").unwrap(), None);
    assert_eq!(kv.session(1, 9).unwrap(), Some(b"last".to_vec()));
    assert_eq!(kv.session(1, 3).unwrap(), Some(b"other".to_vec()));
}

/// What a region split needs from the store: the regions it holds (to find regions whose
/// raft log is still empty), a region's sessions (copied to the new regions), a durable id
/// counter, and a key that halves a range.
#[test]
fn region_ids_sessions_counter_and_middle_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = open_kv(dir.path());
        let mut r = ApplyRound::new();
        for region in [7u64, 3, 300] {
            r.set_descriptor(region, format!("d{region}").into_bytes());
            r.set_applied(region, 1);
        }
        r.set_session(3, 42, b"s42".to_vec());
        r.set_session(3, 5, b"s5".to_vec());
        r.set_session(7, 1, b"other region".to_vec());
        for i in 0..100u32 {
            r.put(3, format!("k{i:03}").into_bytes(), vec![b'v'; 10]);
        }
        kv.apply(r).unwrap();
        assert_eq!(kv.region_ids().unwrap(), vec![3, 7, 300]);
        assert_eq!(
            kv.sessions(3).unwrap(),
            vec![(5, b"s5".to_vec()), (42, b"s42".to_vec())]
        );
        assert_eq!((kv.next_id().unwrap(), kv.next_id().unwrap()), (1, 2));
        let all = KeyRange::new(&b"k"[..], &b"l"[..]);
        let mid = kv.middle_key(&all, 1 << 20).unwrap().unwrap();
        assert_eq!(
            mid,
            Bytes::from_static(b"k050"),
            "equal pairs: the 51st key passes half"
        );
        // Bounded scan: the middle of what was read.
        let part = kv.middle_key(&all, 140).unwrap().unwrap();
        assert!(part.as_ref() < b"k010".as_ref(), "{part:?}");
        let one = KeyRange::new(&b"k099"[..], &b"l"[..]);
        assert_eq!(
            kv.middle_key(&one, 1 << 20).unwrap(),
            None,
            "one key cannot split"
        );
    }
    // The counter survives a restart: nothing handed out before comes out again (what was
    // reserved and not handed out is skipped).
    let kv = open_kv(dir.path());
    let after = kv.next_id().unwrap();
    assert!(after > 2, "{after}");
    drop(kv);
    // Many more than one reserved block, across restarts: strictly increasing throughout.
    let mut last = after;
    for _ in 0..3 {
        let kv = open_kv(dir.path());
        for _ in 0..150 {
            let id = kv.next_id().unwrap();
            assert!(id > last, "{id} after {last}");
            last = id;
        }
    }
}

/// A range of many more keys than the scan keeps samples of: the middle found is still
/// within a few keys of the true one, and the size counts every pair.
#[test]
fn the_middle_of_a_large_range_is_found_from_samples() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    const KEYS: u32 = 50_000;
    let mut r = ApplyRound::new();
    r.set_applied(1, 1);
    for i in 0..KEYS {
        r.put(1, format!("k{i:06}").into_bytes(), vec![b'v'; 9]);
    }
    kv.apply(r).unwrap();
    let all = KeyRange::new(&b"k"[..], &b"l"[..]);
    let (size, mid) = kv.size_and_middle(&all, 1 << 30).unwrap();
    // Data keys carry a one-byte prefix: 8 + 9 bytes a pair.
    assert_eq!(size, u64::from(KEYS) * 17);
    let mid = String::from_utf8(mid.unwrap().to_vec()).unwrap();
    let at: u32 = mid[1..].parse().unwrap();
    // Samples are at most 2 × 50 000 / 4 096 ≈ 25 keys apart.
    assert!(
        (KEYS / 2..=KEYS / 2 + 25).contains(&at),
        "middle at key {at}"
    );
    // Bounded: the middle of the first 17 000 bytes (1 000 pairs), taken exactly.
    let (size, mid) = kv.size_and_middle(&all, 17_000).unwrap();
    assert_eq!(size, 17_000);
    assert_eq!(mid.unwrap(), Bytes::from_static(b"k000500"));
}

/// A merged-away region's records go (descriptor, applied index, sessions); its data keys
/// and every other region's records stay.
#[test]
fn a_removed_region_leaves_no_records_but_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    let mut r = ApplyRound::new();
    for region in [1u64, 2] {
        r.set_descriptor(region, format!("d{region}").into_bytes());
        r.set_session(region, 7, b"s".to_vec());
        r.set_session(region, u64::MAX, b"last client".to_vec());
        r.set_applied(region, 5);
    }
    r.put(2, b"k2".to_vec(), b"v".to_vec());
    kv.apply(r).unwrap();
    let mut r = ApplyRound::new();
    r.remove_region(2);
    kv.apply(r).unwrap();
    assert_eq!(kv.region_ids().unwrap(), vec![1]);
    assert_eq!(kv.descriptor(2).unwrap(), None);
    assert!(kv.sessions(2).unwrap().is_empty());
    assert_eq!(kv.sessions(1).unwrap().len(), 2);
    assert_eq!(kv.get(b"k2").unwrap(), Some(b"v".to_vec()));
    drop(kv);
    let kv = open_kv(dir.path());
    assert_eq!(kv.applied_index(2), 0, "no applied record after a restart");
    assert_eq!(kv.applied_index(1), 5);
}

/// A destroyed replica (a membership change moved it away) leaves nothing: records, data
/// in its range, applied index — so a new replica of the same region can start at 0 — while
/// other regions' data and records stay.
#[test]
fn a_destroyed_region_leaves_nothing_and_can_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let kv = open_kv(dir.path());
    let mut r = ApplyRound::new();
    for region in [1u64, 2] {
        r.set_descriptor(region, format!("d{region}").into_bytes());
        r.set_session(region, 7, b"s".to_vec());
        r.set_applied(region, 9);
    }
    r.put(1, b"a1".to_vec(), b"v".to_vec());
    r.put(1, b"a2".to_vec(), b"v".to_vec());
    r.put(2, b"b1".to_vec(), b"v".to_vec());
    kv.apply(r).unwrap();
    kv.destroy_region(1, Some(&KeyRange::new(&b"a"[..], &b"b"[..])))
        .unwrap();
    assert_eq!(kv.region_ids().unwrap(), vec![2]);
    assert_eq!(kv.descriptor(1).unwrap(), None);
    assert!(kv.sessions(1).unwrap().is_empty());
    assert_eq!(kv.applied_index(1), 0);
    assert!(kv
        .scan(&KeyRange::new(&b"a"[..], &b"b"[..]), 10)
        .unwrap()
        .is_empty());
    assert_eq!(kv.get(b"b1").unwrap(), Some(b"v".to_vec()));
    assert_eq!(kv.sessions(2).unwrap().len(), 1);
    // Without a range, the data stays (another region owns it).
    kv.destroy_region(2, None).unwrap();
    assert_eq!(kv.get(b"b1").unwrap(), Some(b"v".to_vec()));
    assert!(kv.region_ids().unwrap().is_empty());
    // The same region again, from applied index 0 (a replica created from a snapshot).
    let mut r = ApplyRound::new();
    r.set_descriptor(1, b"d1 again".to_vec());
    r.set_applied(1, 0);
    kv.apply(r).unwrap();
    drop(kv);
    let kv = open_kv(dir.path());
    assert_eq!(kv.region_ids().unwrap(), vec![1]);
    assert_eq!(kv.applied_index(1), 0);
}

#[test]
fn a_scan_stops_at_its_limit_and_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let kv = KvStore::open(dir.path(), &small_rocks()).unwrap();
    let mut r = ApplyRound::new();
    for k in 0..100u64 {
        r.put(
            1,
            format!("k{k:03}").into_bytes(),
            format!("v{k}").into_bytes(),
        );
    }
    r.put(2, b"l000".to_vec(), b"other region".to_vec());
    r.set_applied(1, 1);
    r.set_applied(2, 1);
    kv.apply(r).unwrap();
    let range = KeyRange::new(&b"k010"[..], &b"l"[..]);
    let page = kv.scan(&range, 5).unwrap();
    let keys: Vec<&[u8]> = page.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(
        keys,
        [&b"k010"[..], b"k011", b"k012", b"k013", b"k014"],
        "the first five from the start, in order"
    );
    assert_eq!(page[0].1.as_ref(), b"v10");
    // A limit past the range's end stops at the end.
    assert_eq!(kv.scan(&range, 1000).unwrap().len(), 90);
    assert!(kv.scan(&range, 0).unwrap().is_empty());
    // Unbounded end: every key from the start, the other region's key included.
    let all = kv.scan(&KeyRange::new(&b"k095"[..], Bytes::new()), usize::MAX);
    assert_eq!(all.unwrap().len(), 6);
}

/// A snapshot is installed atomically: when its stream breaks part-way (a chunk that does
/// not decode, as from a connection cut mid-chunk) or carries a key outside the region,
/// the install fails and the follower keeps exactly what it had — its data in the range,
/// its applied index and its descriptor — so a retried snapshot starts from a clean state.
#[test]
fn a_snapshot_broken_part_way_installs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = open_kv(dir.path());
    let mut setup = ApplyRound::new();
    setup.set_descriptor(1, b"new descriptor".to_vec());
    setup.set_applied(1, 0);
    source.apply(setup).unwrap();
    for v in 1..=KEYS {
        source.apply(round(v)).unwrap();
    }
    let stream = source.snapshot_region(1, region_range()).unwrap();
    let header = stream.header().clone();
    let chunks: Vec<SnapshotChunk> = stream.map(|c| c.unwrap()).collect();
    assert!(chunks.len() >= 2, "several chunks: {}", chunks.len());

    let follower_dir = tempfile::tempdir().unwrap();
    let follower = KvStore::open(follower_dir.path(), &small_rocks()).unwrap();
    let mut before = ApplyRound::new();
    before.put(1, b"key99999".to_vec(), b"kept".to_vec());
    before.set_descriptor(1, b"old descriptor".to_vec());
    before.set_applied(1, 3);
    follower.apply(before).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            follower.get(b"key99999").unwrap().as_deref(),
            Some(&b"kept"[..]),
            "{what}: data"
        );
        assert_eq!(
            follower.get(&key(1)).unwrap(),
            None,
            "{what}: no key of the snapshot"
        );
        assert_eq!(follower.applied_index(1), 3, "{what}: applied index");
        assert_eq!(
            follower.descriptor(1).unwrap().as_deref(),
            Some(&b"old descriptor"[..]),
            "{what}: descriptor"
        );
    };

    let broken = vec![
        Ok(chunks[0].clone()),
        SnapshotChunk::decode(&chunks[1].encode().unwrap()[..10]),
    ];
    assert!(broken[1].is_err(), "a cut chunk does not decode");
    assert!(follower.install_snapshot(&header, broken).is_err());
    unchanged("a stream cut part-way");

    let mut outside = chunks[1].clone();
    outside
        .pairs
        .push((Bytes::from_static(b"zzz-outside"), Bytes::from_static(b"x")));
    let foreign = vec![Ok(chunks[0].clone()), Ok(outside)];
    assert!(matches!(
        follower.install_snapshot(&header, foreign),
        Err(EngineError::InvalidBatch { .. })
    ));
    unchanged("a key outside the range");

    // The whole stream, retried, installs.
    let permit = follower
        .install_snapshot(&header, chunks.into_iter().map(Ok))
        .unwrap();
    assert_eq!(permit.durable_applied(), KEYS);
    assert_eq!(follower.applied_index(1), KEYS);
    assert_eq!(follower.get(b"key99999").unwrap(), None, "replaced");
    assert_eq!(
        follower.descriptor(1).unwrap().as_deref(),
        Some(&b"new descriptor"[..])
    );
}
