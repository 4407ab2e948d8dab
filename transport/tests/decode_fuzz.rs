//! Proptest fuzzing of everything a peer's bytes reach (`fuzz::decode_untrusted`: the frame
//! decoder, the batch decoder, handshakes, snapshot frames), bounded for CI. Arbitrary
//! bytes, and valid frames with bytes replaced, cut or appended, must never panic; a valid
//! frame decodes as exactly one frame. The cargo-fuzz target (transport/fuzz) runs the same
//! entry point with coverage guidance; `PROPTEST_CASES=200000 cargo test --release -p
//! flotilla-transport --test decode_fuzz` runs this one longer.

use flotilla_transport::frame::encode_frame;
use flotilla_transport::fuzz::decode_untrusted;
use flotilla_transport::{Handshake, StreamKind};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(3000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn frame(cluster: u64, node: u64, secret: Vec<u8>) -> Vec<u8> {
    encode_frame(&Handshake {
        cluster_id: cluster,
        node_id: node,
        stream: StreamKind::Raft,
        secret,
    })
    .expect("a handshake encodes")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        decode_untrusted(&bytes);
    }

    #[test]
    fn valid_frames_decode_and_damaged_ones_never_panic(
        cluster in any::<u64>(),
        node in any::<u64>(),
        secret in proptest::collection::vec(any::<u8>(), 0..64),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let good = frame(cluster, node, secret);
        prop_assert_eq!(decode_untrusted(&good), 1);
        let mut bad = good.clone();
        for (at, b) in &edits {
            let i = at % bad.len();
            bad[i] = *b;
        }
        bad.truncate(cut % (bad.len() + 1));
        bad.extend_from_slice(&tail);
        decode_untrusted(&bad);
        // Two frames back to back, the second damaged.
        let mut two = good.clone();
        two.extend_from_slice(&bad);
        prop_assert!(decode_untrusted(&two) >= 1);
    }
}
