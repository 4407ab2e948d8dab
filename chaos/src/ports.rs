//! Ports for server processes started by a test or a chaos run.
//!
//! A port asked of the kernel (`bind 127.0.0.1:0`) comes from the ephemeral range, the
//! same range outgoing connections take their local ports from. Between our closing it
//! and the server binding it, one of the many outgoing connections on the machine may
//! take it, and the server fails with "Address already in use". Ports handed out here
//! come from below the ephemeral range instead (Linux's default starts at 32768), from a
//! band spread by process id, and each is checked free when handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first port handed out.
pub const LOW: u16 = 10_000;
/// One past the last port handed out: below Linux's default ephemeral range.
pub const HIGH: u16 = 20_000;

/// A port nobody listens on now, outside the ephemeral range. (Another process may still
/// take it before the server binds it, but only one that picks ports the same way: the
/// band starts at an offset from the process id, so concurrent test binaries rarely meet.)
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(HIGH - LOW);
    let start = (std::process::id() % 100) * (span / 100);
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + ((start + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {LOW}..{HIGH}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_distinct_and_free() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        for &p in &ports {
            assert!((LOW..HIGH).contains(&p), "{p}");
        }
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let first = free_port().unwrap();
        // Hold the next port in the sequence: the picker must step over it.
        let next = LOW + (first - LOW + 1) % (HIGH - LOW);
        let held = TcpListener::bind(("127.0.0.1", next));
        let second = free_port().unwrap();
        if held.is_ok() {
            assert_ne!(second, next, "handed out a port that is listened on");
        }
        assert_ne!(second, first);
    }
}
