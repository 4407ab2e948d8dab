//! The systems under test, started (and stopped) by the bench: a Flotilla cluster
//! ([`flotilla`]) and the peers ([`peers`]: a 3-member etcd cluster, one Redis server).

pub mod flotilla;
pub mod peers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long stopping waits for a server after SIGTERM before killing it: a Flotilla node
/// hands its leaderships over for at most 3 s, then stops its store and transport.
pub const STOP_WAIT: Duration = Duration::from_secs(15);

/// Server processes the bench started. Dropping the set kills any still running, so an
/// error (or a panic) never leaves servers behind; [`ProcessSet::stop`] is the orderly way.
#[derive(Debug, Default)]
pub struct ProcessSet {
    procs: Vec<(String, Child)>,
}

impl ProcessSet {
    /// Starts `program args…` named `name`, stdout and stderr appended to `log`, in its own
    /// process group (a terminal's Ctrl-C reaches the bench, whose drop then kills it).
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[std::ffi::OsString],
        log: &Path,
    ) -> Result<u32, String> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| format!("{name}: cannot open its log {}: {e}", log.display()))
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {}: {e}", program.display()))?;
        let pid = child.id();
        self.procs.push((name.to_string(), child));
        Ok(pid)
    }

    /// The first process that has exited, with its name and status.
    pub fn exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                _ => None,
            })
    }

    /// SIGTERM to each, then waits at most [`STOP_WAIT`] and kills what is left.
    pub fn stop(&mut self) {
        for (_, c) in self.procs.iter_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = terminate(c.id());
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline
            && self
                .procs
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, c) in self.procs.iter_mut() {
            if let Ok(None) = c.try_wait() {
                eprintln!("flotilla-bench: {name} did not stop within {STOP_WAIT:?}; killing it");
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.procs.clear();
    }
}

impl Drop for ProcessSet {
    fn drop(&mut self) {
        for (_, c) in self.procs.iter_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// SIGTERM to `pid` through the shell's `kill` (std has no signal call).
fn terminate(pid: u32) -> std::io::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -TERM {pid}: {status}")))
    }
}

/// The full path of `program` on the PATH, if it is there.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether every port of `ports` can be bound on 127.0.0.1 now.
pub fn ports_free(ports: &[u16]) -> Result<(), String> {
    for &p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).map_err(|e| {
            format!("port {p} on 127.0.0.1 is not free ({e}); pick others with --base-port")
        })?;
    }
    Ok(())
}

/// A fresh directory `parent/name-N` (N the first number not taken).
pub fn fresh_dir(parent: &Path, name: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    for n in 0.. {
        let dir = parent.join(format!("{name}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    unreachable!("an unbounded range always yields")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dirs_never_reuse_a_name() {
        let parent = tempfile::tempdir().unwrap();
        let a = fresh_dir(parent.path(), "x").unwrap();
        let b = fresh_dir(parent.path(), "x").unwrap();
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
    }

    #[test]
    fn processes_are_stopped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = ProcessSet::default();
        let sh = find_on_path("sh").expect("sh on the PATH");
        set.spawn(
            "sleeper",
            &sh,
            &["-c".into(), "sleep 30".into()],
            &dir.path().join("log"),
        )
        .unwrap();
        set.spawn(
            "quitter",
            &sh,
            &["-c".into(), "exit 3".into()],
            &dir.path().join("log"),
        )
        .unwrap();
        let began = Instant::now();
        while set.exited().is_none() {
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "sh -c 'exit 3' never exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(set.exited().unwrap().contains("quitter exited"));
        set.stop();
        assert!(set.procs.is_empty());
    }
}
