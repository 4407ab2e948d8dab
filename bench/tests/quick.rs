//! `flotilla-bench run --quick --seconds 3` as a user runs it, against an in-process
//! cluster (`--in-process`: the nodes run inside the bench, so the test needs no `flotilla`
//! binary built beside it), then the JSON file it wrote. Nothing here asserts on speed: only
//! that the run measured something, wrote what the schema promises, and printed the
//! summary line.

use std::process::Command;

use flotilla_bench::report;
use flotilla_bench::results::{Outcome, RunFile, SCHEMA};
use flotilla_bench::workload::Workload;

/// A base port whose etcd ports (base + 100 + 10 i, +1) are free now, outside the
/// ephemeral range (see `flotilla_chaos::ports`).
fn free_base_port() -> u16 {
    let etcd: Vec<u16> = (0..3).flat_map(|i| [100 + 10 * i, 101 + 10 * i]).collect();
    flotilla_chaos::ports::free_base(&etcd).expect("a free port range")
}

#[test]
fn quick_run_writes_its_json_and_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-bench"))
        .args([
            "run",
            "--quick",
            "--seconds",
            "3",
            "--warmup",
            "1",
            "--in-process",
        ])
        .arg("--results-dir")
        .arg(&results)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--base-port")
        .arg(free_base_port().to_string())
        .output()
        .expect("flotilla-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );

    // The last line, in the format.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("flotilla-bench: write regions=64 ops/s="),
        "{last:?}\n{stdout}"
    );
    assert!(
        last.contains(" p99_ms=") && last.contains(" | regions=1 ops/s="),
        "{last}"
    );
    let etcd_installed = which("etcd");
    assert_eq!(last.contains(" | etcd ops/s="), etcd_installed, "{last}");

    // Exactly one run file, of this schema, describing what ran.
    let files: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with("-quick.json"));
    let run = RunFile::load(&files[0]).unwrap();
    assert_eq!(run.schema, SCHEMA);
    assert!(run.config.quick);
    assert_eq!(run.config.cluster, "in-process");
    assert_eq!(run.config.seconds, 3.0);
    assert!(run.command.contains("--quick"));
    assert!(!run.git_commit.is_empty());
    assert!(run.machine.cores >= 1 && run.machine.memory_bytes > 0);
    assert!(run.limits.fdatasync_per_sec > 0.0 && run.limits.loopback_mb_per_sec > 0.0);

    let flotilla: Vec<_> = run
        .cells
        .iter()
        .filter(|c| c.system == "flotilla")
        .collect();
    let regions: Vec<Option<usize>> = flotilla.iter().map(|c| c.regions).collect();
    assert_eq!(regions, [Some(64), Some(1)]);
    for c in &flotilla {
        assert_eq!(c.workload, Workload::Write);
        assert_eq!(
            (c.value_size, c.clients, c.pipeline, c.replicas),
            (16, 64, 16, 3)
        );
        let m = match &c.outcome {
            Outcome::Measured(m) => m,
            Outcome::Skipped(why) => panic!("flotilla cell skipped: {why}"),
        };
        assert!(m.ops > 0, "no write acknowledged: {m:?}");
        assert!(m.latency.p50_ms > 0.0 && m.latency.p50_ms <= m.latency.p99_ms);
        assert!(m.latency.p99_ms <= m.latency.max_ms);
        assert_eq!(m.leaders_per_node.len(), 3);
        assert_eq!(m.leaders_per_node.iter().sum::<usize>(), c.regions.unwrap());
        assert!(m.warmup_ops_per_sec > 0.0);
    }
    let etcd_cells: Vec<_> = run.cells.iter().filter(|c| c.system == "etcd").collect();
    if etcd_installed {
        assert_eq!(etcd_cells.len(), 1);
        let m = etcd_cells[0].measured().expect("etcd measured");
        assert!(m.ops > 0);
        assert!(stdout.contains("vs etcd"), "{stdout}");
    } else {
        assert!(etcd_cells.is_empty());
    }
    // The table printed and the one the report renders are the same.
    assert!(stdout.contains(&report::cells_table(&run)), "{stdout}");
    assert!(stdout.contains("ops per raw fdatasync"), "{stdout}");
}

fn which(program: &str) -> bool {
    flotilla_bench::system::find_on_path(program).is_some()
}
