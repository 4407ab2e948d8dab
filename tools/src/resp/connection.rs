//! One client connection: read, parse every whole request in the buffer, run them as a
//! pipeline, answer in order, read again.
//!
//! Pipelining keeps Redis' promise that a connection's commands take effect in order while
//! still letting the service overlap them: consecutive reads are in flight together, and so
//! are consecutive writes (the service keeps writes in submission order, see
//! [`KvService`](crate::service::KvService)); a read waits for the writes before it to be
//! answered, and a write for the reads before it. At most `pipeline_depth_max` commands are
//! in flight on one connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::command::{Access, Command};
use super::execute::{execute, Outcome, PendingReply, Session, Shared};
use super::metric;
use super::parser::RequestParser;
use super::reply::Reply;

/// Bytes asked of the socket per read: a pipeline of small commands fits, and it is what
/// the read buffer grows by while a large request arrives.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// Answers are written out once this many bytes have piled up, even mid-pipeline, so a
/// pipeline of large `GET`s does not hold all of its answers in memory.
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// A client that does not take its answers within this time is disconnected, so one that
/// stopped reading cannot hold a connection slot and its unsent answers forever.
const WRITE_TIMEOUT_MILLIS: u64 = 30_000;

/// Writes all of `out` to the client and empties it.
async fn write_out(stream: &mut TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    let timeout = Duration::from_millis(WRITE_TIMEOUT_MILLIS);
    match tokio::time::timeout(timeout, stream.write_all(out)).await {
        Ok(written) => {
            written?;
            out.clear();
            Ok(())
        }
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client did not read its answers",
        )),
    }
}

/// A command whose answer has not been written yet.
struct InFlight {
    command: &'static str,
    started: Instant,
    answer: Answer,
}

enum Answer {
    Ready(Reply),
    Pending(PendingReply),
}

/// The commands of the current pipeline, in the order they arrived, and the kind of data
/// access they share.
struct Pipeline {
    queue: VecDeque<InFlight>,
    access: Access,
    depth_max: usize,
}

impl Pipeline {
    /// Whether a command of kind `next` must wait until what is in flight has answered.
    fn must_wait_for(&self, next: Access) -> bool {
        let conflict = matches!(
            (self.access, next),
            (Access::Read, Access::Write) | (Access::Write, Access::Read)
        );
        conflict || self.queue.len() >= self.depth_max
    }

    fn push(&mut self, command: &'static str, access: Access, started: Instant, answer: Answer) {
        if access != Access::Local {
            self.access = access;
        }
        self.queue.push_back(InFlight {
            command,
            started,
            answer,
        });
    }

    /// Waits for every answer in order and encodes it into `out`, writing `out` to the socket
    /// whenever it passes [`WRITE_BATCH_BYTES`].
    async fn drain(&mut self, out: &mut BytesMut, stream: &mut TcpStream) -> std::io::Result<()> {
        while let Some(item) = self.queue.pop_front() {
            let reply = match item.answer {
                Answer::Ready(r) => r,
                Answer::Pending(f) => f.await,
            };
            metric::command_done(item.command, item.started, reply.is_error());
            reply.encode(out);
            if out.len() >= WRITE_BATCH_BYTES {
                write_out(stream, out).await?;
            }
        }
        self.access = Access::Local;
        Ok(())
    }
}

/// Serves one connection until the client closes it, sends `QUIT`, breaks the protocol, or
/// the server stops (`stop` changes or its sender is dropped).
pub async fn serve_connection(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    pipeline_depth_max: usize,
    mut stop: watch::Receiver<()>,
) {
    let peer = stream.peer_addr().ok();
    let mut session = Session::default();
    let mut parser = RequestParser::new();
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = BytesMut::new();
    let mut pipeline = Pipeline {
        queue: VecDeque::new(),
        access: Access::Local,
        depth_max: pipeline_depth_max.max(1),
    };
    loop {
        let mut close = false;
        loop {
            let request = match parser.next(&mut inbuf) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(?peer, error = %e, "closing RESP connection on a protocol error");
                    metric::protocol_error();
                    pipeline.push(
                        "protocol",
                        Access::Local,
                        Instant::now(),
                        Answer::Ready(Reply::err(e)),
                    );
                    close = true;
                    break;
                }
            };
            if request.is_empty() {
                continue;
            }
            let started = Instant::now();
            let (spec, cmd) = match Command::parse(request) {
                Ok(parsed) => parsed,
                Err((spec, reply)) => {
                    let name = spec.map_or("unknown", |s| s.name);
                    metric::command_started(name);
                    pipeline.push(name, Access::Local, started, Answer::Ready(reply));
                    continue;
                }
            };
            metric::command_started(spec.name);
            if pipeline.must_wait_for(spec.access)
                && pipeline.drain(&mut out, &mut stream).await.is_err()
            {
                return;
            }
            match execute(cmd, &mut session, &shared) {
                Outcome::Ready(r) => {
                    pipeline.push(spec.name, spec.access, started, Answer::Ready(r))
                }
                Outcome::Pending(f) => {
                    pipeline.push(spec.name, spec.access, started, Answer::Pending(f))
                }
                Outcome::Close(r) => {
                    pipeline.push(spec.name, spec.access, started, Answer::Ready(r));
                    close = true;
                    break;
                }
            }
        }
        if pipeline.drain(&mut out, &mut stream).await.is_err() {
            return;
        }
        if !out.is_empty() && write_out(&mut stream, &mut out).await.is_err() {
            return;
        }
        if close {
            return;
        }
        inbuf.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            read = stream.read_buf(&mut inbuf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = stop.changed() => return,
        }
    }
}
