#!/usr/bin/env python3
"""Where a write's CPU goes, by stage of the write path.

Reads `perf script -F comm,tid,ip,sym` output of the server processes (recorded with
`--call-graph dwarf`), assigns each sample to one stage and prints each stage's share of
the samples and, given the run's acknowledged writes per second and the cores the
samples cover, its CPU time per acknowledged write (all replicas together).

A sample's stage is the first rule that matches walking its stack from the leaf toward
the thread's root, so kernel frames (a syscall, a context switch) count for the code that
entered the kernel; a sample no rule matches counts for its thread's stage. See
bench/profile/README.md for how to record.

    stages.py PERF_SCRIPT_OUTPUT --writes-per-sec N --cores C
"""
import argparse
import collections
import re

# Checked first, anywhere in the stack: the raft core reading its log through the WAL's
# index is raft work, not a log write.
ANYWHERE = [
    ("raft", r"peer_storage::PeerStorage"),
]
# (stage, pattern over a frame's symbol), checked in this order on each frame, leaf first.
RULES = [
    ("respond", r"oneshot::Sender<T>::send|Peer::answer_forwarded|resp::connection::write_out|resp::reply|Pipeline::drain"),
    ("wal", r"flotilla_engine::wal|flotilla_engine::commit|flotilla_engine::index::RegionIndex|GroupCommitter|fdatasync"),
    ("apply: RocksDB write", r"DBImpl::WriteImpl"),
    ("apply: commands, sessions", r"session::Command::decode|session::_::<impl serde_core::de|KvStore::apply|store::apply_command|ApplyContext|SessionTable::apply|sessions_fold_due|take_in_source"),
    ("send", r"store::send_envelopes|Transport>::send_batch|flotilla_transport::peer|encode_envelope|FrameWriter|transport::wire::write"),
    ("receive", r"decode_envelope|decode_batch|flotilla_transport::listener|FrameReader|Store::step_envelope|Store::handle\b|inbound"),
    ("propose and route", r"session::Command::encode|session::_::<impl serde_core::ser|Store::propose|NodeHandle|RegionMap::route|Attempt<F>|node_service::NodeService"),
    ("raft", r"flotilla_region::raft::|PeerStorage"),
    ("parse and execute", r"flotilla_tools::resp::parser|flotilla_tools::resp::execute|resp::metric|serve_connection|flotilla_tools::resp"),
    ("rocksdb background", r"rocksdb::(DBImpl::Background|CompactionJob|FlushJob|BlockBasedTableBuilder|CompactionIterator)"),
]
THREADS = [
    (r"^store", "store loop (Readies, rounds, timers)"),
    (r"^flotilla-wal", "wal"),
    (r"^transport", "transport other"),
    (r"^tokio-rt", "parse and execute"),
    (r"^rocksdb", "rocksdb background"),
    (r"^inbound", "receive"),
]


def samples(path):
    comm, frames = None, []
    with open(path) as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif line[0] not in " \t":
                comm, frames = line.split()[0], []
            else:
                parts = line.strip().split(" ", 1)
                frames.append(parts[1] if len(parts) > 1 else "")
    if comm is not None:
        yield comm, frames


def stage_of(comm, frames, rules, anywhere):
    for stage, pattern in anywhere:
        if any(pattern.search(f) for f in frames):
            return stage
    for frame in frames:
        for stage, pattern in rules:
            if pattern.search(frame):
                return stage
    for pattern, stage in THREADS:
        if re.search(pattern, comm):
            return stage
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("perf_script")
    ap.add_argument("--writes-per-sec", type=float, required=True)
    ap.add_argument("--cores", type=float, required=True,
                    help="cores the samples cover: samples / (frequency * seconds)")
    args = ap.parse_args()
    rules = [(s, re.compile(p)) for s, p in RULES]
    anywhere = [(s, re.compile(p)) for s, p in ANYWHERE]
    counts = collections.Counter()
    for comm, frames in samples(args.perf_script):
        counts[stage_of(comm, frames, rules, anywhere)] += 1
    total = sum(counts.values())
    per_write = args.cores / args.writes_per_sec * 1e6
    print(f"{total} samples, {args.cores:.2f} cores, {args.writes_per_sec:.0f} writes/s: "
          f"{per_write:.1f} us of CPU per acknowledged write\n")
    print("| stage | share of CPU | us per acknowledged write |")
    print("|---|---:|---:|")
    for stage, n in counts.most_common():
        print(f"| {stage} | {100 * n / total:.1f} % | {per_write * n / total:.2f} |")


if __name__ == "__main__":
    main()
