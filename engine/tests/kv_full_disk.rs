//! RocksDB on a full disk (a small tmpfs, so the test needs root to mount it; without it the
//! test says so and passes): writes fail with an error the engine reports as a full disk,
//! RocksDB then refuses every write (its background-error, read-only state), closing it
//! does not abort the process, and reopening it once space is back clears that state and
//! keeps every write it acknowledged.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::small_rocks;
use flotilla_engine::{ApplyRound, KvStore};

/// Unmounts when dropped, also on a panic.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, bytes: u64) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
        .arg("tmpfs")
        .arg(dir)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then(|| Mount(dir.to_path_buf()))
}

fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
}

fn round(i: u64) -> ApplyRound {
    let mut r = ApplyRound::new();
    r.put(1, format!("key{i:06}"), vec![b'v'; 4096]);
    r.set_applied(1, i);
    r
}

#[test]
fn rocksdb_on_a_full_disk_fails_clearly_and_a_reopen_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(dir.path(), 24 << 20) else {
        eprintln!("cannot mount a tmpfs here (needs root); nothing to check");
        return;
    };
    let path = dir.path().join("kv");
    let kv = KvStore::open(&path, &small_rocks()).unwrap();
    let mut acked = 0;
    for i in 1..=50 {
        kv.apply(round(i)).unwrap();
        acked = i;
    }
    kv.sync().unwrap();
    fill(dir.path());
    let err = loop {
        match kv.apply(round(acked + 1)).and_then(|()| kv.sync()) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 100_000, "the disk never filled");
    };
    assert!(err.is_no_space(), "reported as a full disk: {err}");
    // Read-only now, whatever is freed meanwhile: every write is refused.
    std::fs::remove_file(dir.path().join("filler")).unwrap();
    assert!(kv.apply(round(acked + 1)).is_err(), "RocksDB stays stopped");
    // Closing after the failure must not abort (see KvStore's Drop).
    drop(kv);
    let kv = KvStore::open(&path, &small_rocks()).unwrap();
    assert!(
        kv.applied_index(1) >= acked,
        "{} < {acked}",
        kv.applied_index(1)
    );
    for i in 1..=acked {
        let v = kv.get(format!("key{i:06}").as_bytes()).unwrap();
        assert_eq!(v.map(|v| v.len()), Some(4096), "key {i}");
    }
    kv.apply(round(acked + 1)).unwrap();
    kv.sync().unwrap();
}
