//! The JSON file each `flotilla-bench run` writes: what was run (the full configuration and
//! command line), on what (git commit, machine, measured limits) and what it gave (one
//! [`Cell`] per combination of the sweep).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::latency::{LatencyBasis, Percentiles};
use crate::machine::{Limits, MachineInfo};
use crate::workload::Workload;

/// The `schema` field of every file; bump when a field changes meaning.
pub const SCHEMA: &str = "flotilla-bench/1";

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// [`SCHEMA`].
    pub schema: String,
    /// When the run started, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_at: String,
    /// The command line.
    pub command: String,
    /// `git rev-parse HEAD` of the working directory, or `unknown`.
    pub git_commit: String,
    /// Whether the working tree had uncommitted changes.
    pub git_dirty: bool,
    /// The machine.
    pub machine: MachineInfo,
    /// Its limits, measured in this run.
    pub limits: Limits,
    /// The configuration the cells were swept over.
    pub config: RunConfig,
    /// One per combination that ran (or was skipped, with why).
    pub cells: Vec<Cell>,
}

/// The configuration of a run (the flags, after presets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Systems measured: `flotilla`, `etcd`, `redis`.
    pub systems: Vec<String>,
    /// Flotilla client: `resp` or `native`.
    pub client: String,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Region counts of the clusters started (empty with `--target`).
    pub regions: Vec<usize>,
    /// Value sizes, bytes.
    pub value_sizes: Vec<usize>,
    /// Connections.
    pub clients: Vec<usize>,
    /// Requests in flight per connection.
    pub pipelines: Vec<usize>,
    /// Offered loads, ops/s (empty: closed loop only).
    pub rates: Vec<f64>,
    /// Measured seconds per cell.
    pub seconds: f64,
    /// Warm-up seconds per cell.
    pub warmup: f64,
    /// Seed of key and operation choice.
    pub seed: u64,
    /// Key space size.
    pub keys: u64,
    /// Flotilla nodes (and etcd members).
    pub nodes: usize,
    /// `process`, `in-process` or `target`.
    pub cluster: String,
    /// The `--target` addresses, if any.
    pub target: Vec<String>,
    /// The `--quick` preset.
    pub quick: bool,
    /// The `--server-config` file given to every started `flotilla server`, and its text
    /// (absent: the servers' defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_config: Option<ServerConfigFile>,
}

/// A server configuration file a run started its nodes with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfigFile {
    /// Its path, as given.
    pub path: String,
    /// Its text when the run started.
    pub text: String,
}

/// One measured combination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// `flotilla`, `etcd` or `redis`.
    pub system: String,
    /// How it was driven: `resp`, `native` (flotilla-client), `etcd-client`.
    pub client: String,
    /// Regions of the Flotilla cluster (as its routing table said); `None` for peers.
    pub regions: Option<usize>,
    /// Replicas (nodes or members; 1 for redis).
    pub replicas: usize,
    /// The workload.
    pub workload: Workload,
    /// Value size, bytes.
    pub value_size: usize,
    /// Connections.
    pub clients: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Offered load (open loop), ops/s; `None` for closed loop.
    pub rate: Option<f64>,
    /// The result, or why the cell did not run.
    pub outcome: Outcome,
}

/// What a cell gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It ran (boxed: far larger than a skip).
    Measured(Box<Measured>),
    /// It did not run, and why (a peer that is not installed, a workload it lacks).
    Skipped(String),
}

/// The numbers of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Measured seconds.
    pub seconds: f64,
    /// Successful operations in the window.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Payload MB/s (values written and read, 10^6 bytes).
    pub mb_per_sec: f64,
    /// Failed operations in the window.
    pub errors: u64,
    /// A few of the error messages.
    pub error_samples: Vec<String>,
    /// The latency to quote.
    pub latency: Percentiles,
    /// How [`Measured::latency`] was obtained.
    pub latency_basis: LatencyBasis,
    /// The closed-loop correction's interval, µs.
    pub expected_interval_us: Option<u64>,
    /// Send-to-answer times as measured (no correction).
    pub service_latency: Percentiles,
    /// Operations per second during the warm-up.
    pub warmup_ops_per_sec: f64,
    /// Cores busy on average during the window (the whole machine: servers, driver and
    /// anything else running, such as other users' builds on a shared machine).
    pub cpu_busy_cores: Option<f64>,
    /// Cores the server processes the bench started used during the window (`None` for
    /// in-process nodes and `--target`).
    #[serde(default)]
    pub server_cores: Option<f64>,
    /// Cores the bench's own process used during the window (the driver; with
    /// `--in-process`, the nodes too).
    #[serde(default)]
    pub driver_cores: Option<f64>,
    /// Leaders per node when the cell started (Flotilla; node order).
    pub leaders_per_node: Vec<usize>,
}

impl Measured {
    /// Acknowledged operations per raw `fdatasync` of the disk: how many operations each
    /// sync the bare disk can do would have to carry to reach this rate.
    pub fn ops_per_raw_sync(&self, limits: &Limits) -> Option<f64> {
        (limits.fdatasync_per_sec > 0.0).then(|| self.ops_per_sec / limits.fdatasync_per_sec)
    }

    /// Payload throughput as a share of loopback TCP bandwidth.
    pub fn loopback_share(&self, limits: &Limits) -> Option<f64> {
        (limits.loopback_mb_per_sec > 0.0).then(|| self.mb_per_sec / limits.loopback_mb_per_sec)
    }
}

impl Cell {
    /// The numbers, if the cell ran.
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Measured(m) => Some(m.as_ref()),
            Outcome::Skipped(_) => None,
        }
    }
}

/// The git commit of the working directory and whether the tree is dirty.
pub fn git_state() -> (String, bool) {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            (commit, dirty)
        }
        None => ("unknown".into(), false),
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now as [`utc_timestamp`].
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

impl RunFile {
    /// Writes the run to `dir/<started_at>-<label>.json` (the directory is created) and
    /// answers the path.
    pub fn save(&self, dir: &Path, label: &str) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let stamp: String = self
            .started_at
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let path = dir.join(format!("{stamp}-{label}.json"));
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, text + "\n")?;
        Ok(path)
    }

    /// Reads every `*.json` run file of `dir`, sorted by start time; a file that is not a
    /// run file of this schema is an error naming it.
    pub fn load_dir(dir: &Path) -> Result<Vec<RunFile>, String> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries {
            let path = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(RunFile::load(&path)?);
            }
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(out)
    }

    /// Reads one run file.
    pub fn load(path: &Path) -> Result<RunFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let run: RunFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if run.schema != SCHEMA {
            return Err(format!(
                "{}: schema {:?}, this tool reads {SCHEMA:?}",
                path.display(),
                run.schema
            ));
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}

/// A small run file for the tests of this crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::machine::DiskInfo;

    fn measured(ops_per_sec: f64, p99_ms: f64) -> Outcome {
        let p = Percentiles {
            count: 1000,
            mean_ms: p99_ms / 4.0,
            p50_ms: p99_ms / 5.0,
            p90_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            max_ms: p99_ms * 3.0,
        };
        Outcome::Measured(Box::new(Measured {
            seconds: 10.0,
            ops: (ops_per_sec * 10.0) as u64,
            ops_per_sec,
            mb_per_sec: ops_per_sec * 16.0 / 1e6,
            errors: 0,
            error_samples: Vec::new(),
            latency: p,
            latency_basis: LatencyBasis::Corrected,
            expected_interval_us: Some(8000),
            service_latency: p,
            warmup_ops_per_sec: ops_per_sec,
            cpu_busy_cores: Some(1.9),
            server_cores: Some(1.5),
            driver_cores: Some(0.4),
            leaders_per_node: vec![21, 21, 22],
        }))
    }

    fn cell(system: &str, client: &str, regions: Option<usize>, outcome: Outcome) -> Cell {
        Cell {
            system: system.into(),
            client: client.into(),
            regions,
            replicas: 3,
            workload: Workload::Write,
            value_size: 16,
            clients: 64,
            pipeline: 16,
            rate: None,
            outcome,
        }
    }

    /// Flotilla at 64 and 1 regions, etcd, and a skipped Redis.
    pub fn sample_run() -> RunFile {
        RunFile {
            schema: SCHEMA.into(),
            started_at: "2026-12-01T10:00:00Z".into(),
            command: "flotilla-bench run --quick".into(),
            git_commit: "0123456789abcdef".into(),
            git_dirty: false,
            machine: MachineInfo {
                cores: 2,
                cpu_model: "test cpu".into(),
                memory_bytes: 24 << 30,
                kernel: "6.1".into(),
                load_average_1m: 0.5,
                disk: DiskInfo {
                    data_dir: "/tmp/x".into(),
                    device: "/dev/vda1".into(),
                    mount_point: "/".into(),
                    fs_type: "ext4".into(),
                },
            },
            limits: Limits {
                fdatasync_per_sec: 8000.0,
                loopback_mb_per_sec: 3000.0,
                cores: 2,
            },
            config: RunConfig {
                systems: vec!["flotilla".into(), "etcd".into(), "redis".into()],
                client: "resp".into(),
                workloads: vec![Workload::Write],
                regions: vec![64, 1],
                value_sizes: vec![16],
                clients: vec![64],
                pipelines: vec![16],
                rates: Vec::new(),
                seconds: 10.0,
                warmup: 2.0,
                seed: 1,
                keys: 100_000,
                nodes: 3,
                cluster: "process".into(),
                target: Vec::new(),
                quick: true,
                server_config: None,
            },
            cells: vec![
                cell("flotilla", "resp", Some(64), measured(120_000.0, 20.0)),
                cell("flotilla", "resp", Some(1), measured(50_000.0, 40.0)),
                cell("etcd", "etcd-client", None, measured(20_000.0, 80.0)),
                cell(
                    "redis",
                    "resp",
                    None,
                    Outcome::Skipped("redis-server is not installed".into()),
                ),
            ],
        }
    }
}

#[cfg(test)]
mod schema_tests {
    use super::tests_support::sample_run;
    use super::*;

    #[test]
    fn run_files_round_trip_and_keep_their_field_names() {
        let run = sample_run();
        let dir = tempfile::tempdir().unwrap();
        let path = run.save(dir.path(), "quick").unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            "20261201T100000Z-quick.json"
        );
        assert_eq!(RunFile::load(&path).unwrap(), run);
        // The names other tools (and the report) read.
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["limits"]["fdatasync_per_sec"], 8000.0);
        assert_eq!(v["machine"]["disk"]["fs_type"], "ext4");
        assert_eq!(v["config"]["workloads"][0], "write");
        let c = &v["cells"][0];
        assert_eq!(c["system"], "flotilla");
        assert_eq!(c["regions"], 64);
        let m = &c["outcome"]["measured"];
        assert_eq!(m["ops_per_sec"], 120_000.0);
        assert_eq!(m["latency"]["p99_ms"], 20.0);
        assert_eq!(m["latency_basis"], "corrected");
        assert_eq!(
            v["cells"][3]["outcome"]["skipped"],
            "redis-server is not installed"
        );
        assert_eq!(
            serde_json::to_value(Workload::Mixed { read_percent: 90 }).unwrap(),
            serde_json::json!({"mixed": {"read_percent": 90}})
        );
    }

    #[test]
    fn files_of_another_schema_are_refused() {
        let mut run = sample_run();
        run.schema = "flotilla-bench/0".into();
        let dir = tempfile::tempdir().unwrap();
        let path = run.save(dir.path(), "old").unwrap();
        let e = RunFile::load(&path).unwrap_err();
        assert!(e.contains("flotilla-bench/0"), "{e}");
        assert!(RunFile::load_dir(dir.path()).is_err());
    }
}
