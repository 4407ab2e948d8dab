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
    free_base(&[0])
}

/// A base port `b` such that `b + o` is free now for every offset `o` in `offsets` (a
/// layout of several servers' ports, such as three per node ten apart), from the same
/// band as [`free_port`]. Successive calls step past each other's layouts.
pub fn free_base(offsets: &[u16]) -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let reach = u32::from(offsets.iter().copied().max().unwrap_or(0)) + 1;
    let span = u32::from(HIGH - LOW);
    let bases = span.saturating_sub(reach) + 1;
    let start = (std::process::id() % 100) * (span / 100);
    for _ in 0..bases {
        let k = NEXT.fetch_add(reach, Ordering::Relaxed);
        let base = LOW + ((start + k) % bases) as u16;
        if offsets
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
        {
            return Ok(base);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free layout {offsets:?} in {LOW}..{HIGH}"),
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
    fn a_layout_is_free_inside_the_band_and_the_next_one_does_not_overlap_it() {
        let layout = [0, 1, 2, 10, 11, 12];
        let a = free_base(&layout).unwrap();
        let b = free_base(&layout).unwrap();
        for base in [a, b] {
            assert!(LOW <= base && base + 12 < HIGH, "{base}");
        }
        assert!(a.abs_diff(b) > 12, "{a} and {b} overlap");
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
