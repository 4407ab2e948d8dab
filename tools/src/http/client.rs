//! A minimal HTTP/1.1 client for the status server: one request per connection, a timeout on
//! the whole exchange, a cap on the answer's size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::HOST;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer accepted: `/status` of a node with tens of thousands of regions fits.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// Why a request to the status server failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// No TCP connection to the address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The exchange broke off or the answer was not HTTP.
    #[error("HTTP exchange with {addr} failed: {message}")]
    Protocol {
        /// The address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// A status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// Talks to one status server.
#[derive(Debug, Clone)]
pub struct StatusClient {
    addr: String,
    timeout: Duration,
}

impl StatusClient {
    /// A client for the status server at `addr` (`host:port`); every request must finish
    /// within `timeout`.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `method path_and_query` with an empty body and returns the answer, whatever its
    /// status.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<HttpResponse, HttpClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path_and_query)).await {
            Ok(result) => result,
            Err(_) => Err(HttpClientError::Timeout {
                addr: self.addr.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<HttpResponse, HttpClientError> {
        let protocol = |e: &dyn std::fmt::Display| HttpClientError::Protocol {
            addr: self.addr.clone(),
            message: e.to_string(),
        };
        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| HttpClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(&e))?;
        // The connection task ends when the exchange does (or with the timeout's drop).
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(HOST, &self.addr)
            .body(Empty::<Bytes>::new())
            .map_err(|e| protocol(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| protocol(&*e))?
            .to_bytes();
        conn.abort();
        Ok(HttpResponse { status, body })
    }
}
