//! The first frame of every connection, and its answer.
//!
//! The frame header already carries the magic number and the protocol version; the
//! handshake payload adds the cluster id, the sender's node id, which stream this
//! connection is (raft messages or one snapshot) and the shared secret, if one is set.
//! The acceptor answers [`HandshakeReply::Accepted`] with its own node id (so a dialer
//! notices a wrong address) or [`HandshakeReply::Refused`] with the reason, then closes.

use crate::config::{TransportConfig, HANDSHAKE_FRAME_BYTES_MAX};
use crate::error::HandshakeError;
use crate::frame::{decode_value, encode_frame};
use crate::wire::{write_all_timeout, FrameReader, ReadError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// What a connection carries after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Batches of raft messages, one way (dialer → acceptor).
    Raft,
    /// One snapshot in chunks, acknowledged by the acceptor.
    Snapshot,
}

/// The dialer's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The dialer's cluster.
    pub cluster_id: u64,
    /// The dialer's node id.
    pub node_id: u64,
    /// What the connection will carry.
    pub stream: StreamKind,
    /// The shared secret (empty if none is configured).
    pub secret: Vec<u8>,
}

/// The acceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeReply {
    /// Go ahead; this is the acceptor's node id.
    Accepted {
        /// The acceptor's node id.
        node_id: u64,
    },
    /// Refused, and why; the acceptor closes the connection.
    Refused {
        /// A human-readable reason, for the dialer's log.
        reason: String,
    },
}

impl Handshake {
    /// The handshake this node sends for a `stream` connection.
    pub fn new(config: &TransportConfig, stream: StreamKind) -> Self {
        Handshake {
            cluster_id: config.cluster_id,
            node_id: config.node_id,
            stream,
            secret: config.secret.clone(),
        }
    }

    /// Whether a node configured as `config` accepts this handshake.
    pub fn check(&self, config: &TransportConfig) -> Result<(), HandshakeError> {
        if self.cluster_id != config.cluster_id {
            return Err(HandshakeError::WrongCluster {
                expected: config.cluster_id,
                got: self.cluster_id,
            });
        }
        if !secrets_equal(&self.secret, &config.secret) {
            return Err(HandshakeError::WrongSecret);
        }
        if self.node_id == 0 || self.node_id == config.node_id {
            return Err(HandshakeError::BadNodeId(self.node_id));
        }
        Ok(())
    }
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Frame(f) => HandshakeError::Frame(f),
            ReadError::Io(io) => HandshakeError::Io(io),
        }
    }
}

/// A connection past its handshake: the frame reader (bound raised to `frame_bytes_max`)
/// and the write half.
pub(crate) struct Established {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

/// Dials `addr`, presents this node's handshake for `stream` and waits for the answer,
/// which must come from `expected_node`.
pub(crate) async fn dial(
    config: &TransportConfig,
    addr: SocketAddr,
    expected_node: u64,
    stream: StreamKind,
) -> Result<Established, HandshakeError> {
    let connect = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr));
    let socket = connect.await.map_err(|_| HandshakeError::Timeout)??;
    // Raft messages are latency-sensitive and already batched: never wait for Nagle.
    socket.set_nodelay(true)?;
    let (rd, mut writer) = socket.into_split();
    let hello = encode_frame(&Handshake::new(config, stream))?;
    write_all_timeout(&mut writer, &hello, config.handshake_timeout).await?;
    let mut reader = FrameReader::new(rd, HANDSHAKE_FRAME_BYTES_MAX);
    let reply = tokio::time::timeout(config.handshake_timeout, reader.next())
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let Some((payload, _)) = reply else {
        return Err(HandshakeError::Refused("closed without a reply".into()));
    };
    match decode_value::<HandshakeReply>(&payload)? {
        HandshakeReply::Accepted { node_id } if node_id == expected_node => {}
        HandshakeReply::Accepted { node_id } => {
            return Err(HandshakeError::WrongPeer {
                expected: expected_node,
                got: node_id,
            })
        }
        HandshakeReply::Refused { reason } => return Err(HandshakeError::Refused(reason)),
    }
    reader.set_frame_bytes_max(config.frame_bytes_max);
    Ok(Established { reader, writer })
}

/// Reads and checks a dialer's handshake on an accepted socket and answers it. Returns the
/// dialer's node id and stream kind; on refusal the reason has been sent to the dialer
/// (best effort) and the caller closes the socket.
pub(crate) async fn accept(
    config: &TransportConfig,
    socket: TcpStream,
) -> Result<(Handshake, Established), HandshakeError> {
    socket.set_nodelay(true)?;
    let (rd, mut writer) = socket.into_split();
    let mut reader = FrameReader::new(rd, HANDSHAKE_FRAME_BYTES_MAX);
    let first = tokio::time::timeout(config.handshake_timeout, reader.next())
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let Some((payload, _)) = first else {
        return Err(HandshakeError::Refused(
            "closed before the handshake".into(),
        ));
    };
    let hello: Handshake = decode_value(&payload)?;
    if let Err(e) = hello.check(config) {
        let refusal = HandshakeReply::Refused {
            reason: e.to_string(),
        };
        if let Ok(bytes) = encode_frame(&refusal) {
            // Best effort: the dialer learns why; the connection is closed either way.
            let _ = write_all_timeout(&mut writer, &bytes, config.handshake_timeout).await;
        }
        return Err(e);
    }
    let accepted = encode_frame(&HandshakeReply::Accepted {
        node_id: config.node_id,
    })?;
    write_all_timeout(&mut writer, &accepted, config.handshake_timeout).await?;
    reader.set_frame_bytes_max(config.frame_bytes_max);
    Ok((hello, Established { reader, writer }))
}

/// Compares secrets in time independent of where they differ, so the secret cannot be
/// guessed byte by byte from response times.
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: u64, node: u64, secret: &[u8]) -> TransportConfig {
        let mut c = TransportConfig::new(cluster, node, "127.0.0.1:0".parse().unwrap());
        c.secret = secret.to_vec();
        c
    }

    #[test]
    fn checks_cluster_secret_and_node() {
        let server = config(7, 1, b"s3cret");
        assert!(Handshake::new(&config(7, 2, b"s3cret"), StreamKind::Raft)
            .check(&server)
            .is_ok());
        assert!(matches!(
            Handshake::new(&config(8, 2, b"s3cret"), StreamKind::Raft).check(&server),
            Err(HandshakeError::WrongCluster {
                expected: 7,
                got: 8
            })
        ));
        assert!(matches!(
            Handshake::new(&config(7, 2, b"s3creT"), StreamKind::Raft).check(&server),
            Err(HandshakeError::WrongSecret)
        ));
        assert!(matches!(
            Handshake::new(&config(7, 2, b""), StreamKind::Raft).check(&server),
            Err(HandshakeError::WrongSecret)
        ));
        assert!(matches!(
            Handshake::new(&config(7, 1, b"s3cret"), StreamKind::Raft).check(&server),
            Err(HandshakeError::BadNodeId(1))
        ));
    }
}
