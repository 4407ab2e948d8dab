//! One node's connection: a pipelined RESP link that reconnects after it breaks.
//!
//! Many calls share one TCP connection. A writer task sends requests in the order they are
//! queued and records, in the same order, where each answer must go; a reader task decodes
//! answers and hands them out front to back (RESP answers come in request order). When
//! either side fails, the link is closed: every waiting call gets the error, and the next
//! call opens a new link. A call that gives up (its timeout) simply stops listening; its
//! answer is dropped when it arrives.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::ClientError;
use crate::resp::{self, Value};
use crate::routing::unsigned;

/// Requests queued for one link's writer at once; a caller beyond that waits for room,
/// which bounds the memory a burst of calls can take.
const QUEUED_REQUESTS_MAX: usize = 1024;

/// Requests the writer gathers into one socket write, by bytes: enough to batch a burst of
/// small calls into a few packets, small enough not to delay the first of them.
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 << 10;

type Answer = oneshot::Sender<Result<Value, ClientError>>;

/// Why a link closed; every call waiting on it gets this as its error.
#[derive(Debug, Clone)]
enum Closed {
    /// The socket failed or the server closed it: retryable.
    Io(std::io::ErrorKind, String),
    /// The server broke the protocol: not retried.
    Protocol(String),
}

impl Closed {
    fn error(&self, addr: &str) -> ClientError {
        match self {
            Closed::Io(kind, why) => {
                ClientError::connection(addr, std::io::Error::new(*kind, why.clone()))
            }
            Closed::Protocol(why) => ClientError::Protocol(format!("{addr}: {why}")),
        }
    }
}

#[derive(Default)]
struct LinkState {
    /// Where the answers to requests already written go, oldest first.
    waiting: VecDeque<Answer>,
    /// Set once; the link takes no more requests.
    closed: Option<Closed>,
}

struct Link {
    addr: String,
    requests: mpsc::Sender<(Bytes, Answer)>,
    state: Arc<parking_lot::Mutex<LinkState>>,
}

fn close(state: &parking_lot::Mutex<LinkState>, addr: &str, why: Closed) {
    let waiting = {
        let mut s = state.lock();
        if s.closed.is_none() {
            s.closed = Some(why.clone());
        }
        std::mem::take(&mut s.waiting)
    };
    for answer in waiting {
        let _ = answer.send(Err(why.error(addr)));
    }
}

impl Link {
    fn open(stream: TcpStream, addr: String) -> Link {
        let (read, write) = stream.into_split();
        let state = Arc::new(parking_lot::Mutex::new(LinkState::default()));
        let (tx, rx) = mpsc::channel(QUEUED_REQUESTS_MAX);
        let reader = tokio::spawn(read_loop(read, state.clone(), addr.clone()));
        tokio::spawn(write_loop(
            rx,
            write,
            state.clone(),
            addr.clone(),
            reader.abort_handle(),
        ));
        Link {
            addr,
            requests: tx,
            state,
        }
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    async fn call(&self, frame: Bytes) -> Result<Value, ClientError> {
        let (answer, rx) = oneshot::channel();
        if self.requests.send((frame, answer)).await.is_err() {
            return Err(self.closed_error());
        }
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> ClientError {
        let why = self.state.lock().closed.clone();
        why.unwrap_or_else(|| {
            Closed::Io(std::io::ErrorKind::BrokenPipe, "connection closed".into())
        })
        .error(&self.addr)
    }
}

/// Writes queued requests, recording where each answer goes before its bytes leave, until
/// the link is dropped (the queue closes) or a write fails.
async fn write_loop(
    mut rx: mpsc::Receiver<(Bytes, Answer)>,
    mut socket: OwnedWriteHalf,
    state: Arc<parking_lot::Mutex<LinkState>>,
    addr: String,
    reader: tokio::task::AbortHandle,
) {
    let mut out = BytesMut::new();
    while let Some((frame, answer)) = rx.recv().await {
        out.clear();
        out.extend_from_slice(&frame);
        let mut answers = vec![answer];
        while out.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok((frame, answer)) => {
                    out.extend_from_slice(&frame);
                    answers.push(answer);
                }
                Err(_) => break,
            }
        }
        {
            let mut s = state.lock();
            if let Some(why) = &s.closed {
                for a in answers {
                    let _ = a.send(Err(why.error(&addr)));
                }
                continue;
            }
            s.waiting.extend(answers);
        }
        if let Err(e) = socket.write_all(&out).await {
            close(&state, &addr, Closed::Io(e.kind(), e.to_string()));
            break;
        }
    }
    // Dropping the write half shuts the socket for writing; the reader has nothing left
    // to wait for once the link is gone.
    reader.abort();
}

/// Decodes answers and hands them out in order until the socket ends or breaks the protocol.
async fn read_loop(
    mut socket: OwnedReadHalf,
    state: Arc<parking_lot::Mutex<LinkState>>,
    addr: String,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match resp::decode(&mut buf) {
                Ok(Some(value)) => {
                    let answer = state.lock().waiting.pop_front();
                    match answer {
                        Some(a) => {
                            let _ = a.send(Ok(value));
                        }
                        None => {
                            // The server speaks first only to refuse the connection
                            // (`-ERR max number of clients reached`): retryable.
                            let why = match value {
                                Value::Error(e) => {
                                    Closed::Io(std::io::ErrorKind::ConnectionRefused, e)
                                }
                                other => Closed::Protocol(format!("unrequested reply {other:?}")),
                            };
                            close(&state, &addr, why);
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    close(&state, &addr, Closed::Protocol(e.to_string()));
                    return;
                }
            }
        }
        buf.reserve(READ_CHUNK_BYTES);
        match socket.read_buf(&mut buf).await {
            Ok(0) => {
                let why = Closed::Io(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed by the server".into(),
                );
                close(&state, &addr, why);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                close(&state, &addr, Closed::Io(e.kind(), e.to_string()));
                return;
            }
        }
    }
}

/// Encodes `args` as one request frame.
pub(crate) fn frame(args: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    resp::encode_request(args, &mut out);
    out.freeze()
}

/// One node: its address, its id once learned, and its current link.
pub(crate) struct NodeConn {
    addr: String,
    id: parking_lot::Mutex<Option<u64>>,
    /// Held while connecting, so concurrent calls open one link, not one each.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    connect_timeout: Duration,
}

impl NodeConn {
    pub fn new(addr: String, connect_timeout: Duration) -> NodeConn {
        NodeConn {
            addr,
            id: parking_lot::Mutex::new(None),
            link: tokio::sync::Mutex::new(None),
            connect_timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's id, learned with `FLOTILLA.NODE` on every (re)connect.
    pub fn id(&self) -> Option<u64> {
        *self.id.lock()
    }

    /// Opens a link (learning the node's id) unless one is open.
    pub async fn connect(&self) -> Result<(), ClientError> {
        self.link().await.map(|_| ())
    }

    /// Sends one request and waits for its answer, connecting first if needed.
    pub async fn call(&self, frame: Bytes) -> Result<Value, ClientError> {
        let link = self.link().await?;
        link.call(frame).await
    }

    /// The open link, or a new one. A new link first asks the node its id: a node that
    /// restarted on the same address may be another node.
    async fn link(&self) -> Result<Arc<Link>, ClientError> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|l| !l.is_closed()) {
            return Ok(link.clone());
        }
        *slot = None;
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.addr.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ClientError::connection(&self.addr, e)),
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                return Err(ClientError::connection(&self.addr, e));
            }
        };
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let link = Arc::new(Link::open(stream, self.addr.clone()));
        let ask = frame(&[Bytes::from_static(b"FLOTILLA.NODE")]);
        let reply = tokio::time::timeout(self.connect_timeout, link.call(ask))
            .await
            .map_err(|_| {
                let e =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "FLOTILLA.NODE timed out");
                ClientError::connection(&self.addr, e)
            })??;
        let id = match &reply {
            Value::Error(e) => return Err(ClientError::Server(format!("{}: {e}", self.addr))),
            v => unsigned(v).ok_or_else(|| {
                ClientError::Protocol(format!("{}: FLOTILLA.NODE answered {v:?}", self.addr))
            })?,
        };
        let previous = self.id.lock().replace(id);
        if previous.is_some_and(|p| p != id) {
            tracing::info!(addr = %self.addr, previous, id, "node id at this address changed");
        }
        *slot = Some(link.clone());
        Ok(link)
    }
}
