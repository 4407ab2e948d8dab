//! Entries per second through three raft cores in memory (no I/O): the leader proposes
//! batches of 16-byte commands; every Ready is persisted to MemStorage, its messages are
//! delivered and its committed entries are applied, until the batch is committed on all
//! three peers. Logs are compacted behind the applied index so memory stays flat.
//!
//! Run: `cargo bench -p flotilla-region --bench raft_core`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_common::{ConfState, Message};
use flotilla_region::raft::{Config, MemStorage, RawNode, Role};

const PAYLOAD: &[u8; 16] = b"0123456789abcdef";
/// Compact each log once it holds this many applied entries.
const COMPACT_EVERY_ENTRIES: u64 = 64 * 1024;

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    mailbox: Vec<Message>,
    applied: Vec<u64>,
}

impl Cluster {
    fn new() -> Self {
        let nodes = (1..=3u64)
            .map(|id| {
                let store = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
                let mut cfg = Config::new(id);
                cfg.max_inflight_msgs = 4096;
                cfg.max_size_per_msg = 4 << 20;
                cfg.max_uncommitted_size = 0;
                RawNode::new(&cfg, store).expect("valid config")
            })
            .collect();
        let mut c = Cluster {
            nodes,
            mailbox: Vec::new(),
            applied: vec![0; 3],
        };
        c.nodes[0].campaign().expect("voter");
        c.run_until_quiet();
        assert_eq!(c.nodes[0].raft().role(), Role::Leader);
        c
    }

    fn run_until_quiet(&mut self) {
        loop {
            let mut any = false;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                while node.has_ready() {
                    any = true;
                    let mut rd = node.ready();
                    self.mailbox.append(&mut rd.messages);
                    let store = node.store().clone();
                    {
                        let mut s = store.wl();
                        s.append(&rd.entries).expect("append");
                        if let Some(hs) = rd.hard_state {
                            s.set_hard_state(hs);
                        }
                    }
                    self.mailbox.append(&mut rd.persisted_messages);
                    if let Some(last) = rd.committed_entries.last() {
                        self.applied[i] = last.index;
                    }
                    node.advance(rd);
                }
            }
            if self.mailbox.is_empty() && !any {
                break;
            }
            for m in std::mem::take(&mut self.mailbox) {
                let to = (m.to - 1) as usize;
                self.nodes[to].step(m).expect("valid message");
            }
        }
    }

    fn compact(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let applied = self.applied[i];
            // Read the log's bounds before taking the storage's write lock: it is not
            // reentrant and the log reads through the same storage.
            let first = node.raft().first_index();
            if applied >= first + COMPACT_EVERY_ENTRIES {
                let mut s = node.store().wl();
                s.create_snapshot(applied, ConfState::with_voters([1, 2, 3]), Bytes::new())
                    .expect("snapshot");
                s.compact(applied).expect("compact");
            }
        }
    }
}

fn bench_propose(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_core_3_nodes_16B");
    for batch in [1usize, 64, 256, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            let mut cluster = Cluster::new();
            b.iter(|| {
                let data = std::iter::repeat_n(Bytes::from_static(PAYLOAD), batch);
                let last = cluster.nodes[0].propose_batch(data).expect("leader");
                cluster.run_until_quiet();
                debug_assert!(cluster.applied.iter().all(|&a| a >= last));
                cluster.compact();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_propose);
criterion_main!(benches);
