//! The machine a run measures on, and its limits measured in the same run: how many
//! `fdatasync`s per second the data directory's disk completes, how fast loopback TCP
//! carries bytes, and how busy the cores were while a cell ran.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes per write of the fdatasync probe: one page, as a small group commit writes.
const SYNC_PROBE_WRITE_BYTES: usize = 4096;
/// Bytes per write of the loopback probe.
const LOOPBACK_WRITE_BYTES: usize = 1 << 20;

/// What the machine is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Logical cores the process may use.
    pub cores: usize,
    /// CPU model, from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory, bytes (0 if unknown).
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// Load average (1 minute) when the run started: this machine is shared.
    pub load_average_1m: f64,
    /// The disk holding the data directories.
    pub disk: DiskInfo,
}

/// The file system holding the data directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The data directory measured.
    pub data_dir: String,
    /// Device of the mount holding it (from /proc/mounts).
    pub device: String,
    /// Mount point.
    pub mount_point: String,
    /// File system type.
    pub fs_type: String,
}

/// Limits of the machine, measured right before the cells.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// One thread appending 4 KiB and calling `fdatasync`, syncs per second.
    pub fdatasync_per_sec: f64,
    /// One thread writing 1 MiB buffers to another over loopback TCP, MB/s (10^6 bytes).
    pub loopback_mb_per_sec: f64,
    /// Logical cores.
    pub cores: usize,
}

fn read_to_string(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl MachineInfo {
    /// Describes this machine, with `data_dir` as the disk (it must exist).
    pub fn probe(data_dir: &Path) -> MachineInfo {
        let cpuinfo = read_to_string("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = read_to_string("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let load_average_1m = read_to_string("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        MachineInfo {
            cores: cores(),
            cpu_model,
            memory_bytes,
            kernel: read_to_string("/proc/sys/kernel/osrelease")
                .trim()
                .to_string(),
            load_average_1m,
            disk: disk_of(data_dir, &read_to_string("/proc/mounts")),
        }
    }
}

/// Logical cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The mount of `/proc/mounts` (`mounts`) holding `dir`: the longest mount point that is a
/// prefix of its canonical path.
pub fn disk_of(dir: &Path, mounts: &str) -> DiskInfo {
    let path = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, mp, _)| path.starts_with(mp))
        .max_by_key(|(_, mp, _)| mp.len());
    let (device, mount_point, fs_type) = best.unwrap_or(("unknown", "unknown", "unknown"));
    DiskInfo {
        data_dir: path.display().to_string(),
        device: device.into(),
        mount_point: mount_point.into(),
        fs_type: fs_type.into(),
    }
}

/// Measures the limits: `fdatasync` in `data_dir` for `sync_for`, loopback for `net_for`.
pub fn measure_limits(
    data_dir: &Path,
    sync_for: Duration,
    net_for: Duration,
) -> std::io::Result<Limits> {
    Ok(Limits {
        fdatasync_per_sec: fdatasync_rate(data_dir, sync_for)?,
        loopback_mb_per_sec: loopback_rate(net_for)?,
        cores: cores(),
    })
}

/// Syncs per second of one thread appending 4 KiB and calling `fdatasync` in `dir`.
pub fn fdatasync_rate(dir: &Path, run_for: Duration) -> std::io::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let page = vec![0x5au8; SYNC_PROBE_WRITE_BYTES];
    let began = Instant::now();
    let mut syncs = 0u64;
    while began.elapsed() < run_for || syncs == 0 {
        f.write_all(&page)?;
        f.sync_data()?;
        syncs += 1;
    }
    let secs = began.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(syncs as f64 / secs)
}

/// MB/s of one thread writing 1 MiB buffers to another over a loopback TCP connection.
pub fn loopback_rate(run_for: Duration) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; LOOPBACK_WRITE_BYTES];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0xa5u8; LOOPBACK_WRITE_BYTES];
    let began = Instant::now();
    while began.elapsed() < run_for {
        s.write_all(&buf)?;
    }
    drop(s);
    let total = reader
        .join()
        .map_err(|_| std::io::Error::other("loopback reader panicked"))??;
    Ok(total as f64 / began.elapsed().as_secs_f64() / 1e6)
}

/// CPU time counters of /proc/stat's `cpu` line: (busy, total) in clock ticks.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_ticks(&read_to_string("/proc/stat"))
}

/// (busy, total) from the text of /proc/stat; idle and iowait are not busy.
pub fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU time (user + system) of process `pid` so far, in the clock ticks of /proc/stat.
pub fn process_ticks(pid: u32) -> Option<u64> {
    parse_process_ticks(&read_to_string(&format!("/proc/{pid}/stat")))
}

/// utime + stime from the text of /proc/PID/stat (fields 14 and 15; the command name in
/// field 2 may hold spaces, so counting starts after its closing parenthesis).
pub fn parse_process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Cores a set of processes kept busy: their CPU ticks over the machine's total ticks
/// between two readings (same units), times the cores.
pub fn process_cores(
    before: u64,
    after: u64,
    machine_before: (u64, u64),
    machine_after: (u64, u64),
    cores: usize,
) -> Option<f64> {
    let used = after.checked_sub(before)?;
    let total = machine_after.1.checked_sub(machine_before.1)?;
    if total == 0 {
        return None;
    }
    Some(used as f64 / total as f64 * cores as f64)
}

/// Cores busy on average between two readings of [`cpu_ticks`].
pub fn busy_cores(before: (u64, u64), after: (u64, u64), cores: usize) -> Option<f64> {
    let busy = after.0.checked_sub(before.0)?;
    let total = after.1.checked_sub(before.1)?;
    if total == 0 {
        return None;
    }
    Some(busy as f64 / total as f64 * cores as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_prefix_wins() {
        let mounts = "overlay / overlay rw 0 0\n\
                      /dev/vda1 /work ext4 rw 0 0\n\
                      tmpfs /work/tmp tmpfs rw 0 0\n";
        let d = disk_of(Path::new("/work/data/x"), mounts);
        assert_eq!(
            (
                d.device.as_str(),
                d.mount_point.as_str(),
                d.fs_type.as_str()
            ),
            ("/dev/vda1", "/work", "ext4")
        );
        let d = disk_of(Path::new("/work/tmp/y"), mounts);
        assert_eq!(d.fs_type, "tmpfs");
        assert_eq!(disk_of(Path::new("/etc"), mounts).fs_type, "overlay");
    }

    #[test]
    fn busy_cores_come_from_proc_stat() {
        let a = parse_cpu_ticks("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(a, (200, 1000));
        let b = parse_cpu_ticks("cpu  250 0 250 800 100 0 0 0 0 0\n").unwrap();
        assert_eq!(b, (500, 1400));
        let busy = busy_cores(a, b, 2).unwrap();
        assert!((busy - 1.5).abs() < 1e-9, "{busy}");
        assert_eq!(busy_cores(b, a, 2), None);
        assert_eq!(parse_cpu_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn process_cpu_comes_from_proc_pid_stat() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(stat), Some(300));
        assert_eq!(parse_process_ticks("garbage"), None);
        // 300 of 1000 machine ticks on 2 cores: 0.6 cores.
        let c = process_cores(0, 300, (0, 0), (0, 1000), 2).unwrap();
        assert!((c - 0.6).abs() < 1e-9);
        assert!(process_ticks(std::process::id()).is_some());
    }

    #[test]
    fn probes_measure_something_here() {
        let dir = tempfile::tempdir().unwrap();
        let l = measure_limits(
            dir.path(),
            Duration::from_millis(50),
            Duration::from_millis(50),
        )
        .unwrap();
        assert!(
            l.fdatasync_per_sec > 0.0 && l.loopback_mb_per_sec > 0.0,
            "{l:?}"
        );
        assert!(l.cores >= 1);
        assert!(!dir.path().join("fdatasync-probe").exists());
        let m = MachineInfo::probe(dir.path());
        assert_eq!(m.cores, l.cores);
    }
}
