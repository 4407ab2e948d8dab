//! The HTTP status server on the status address, and the small client `ctl` uses.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | `200 ok` while the process serves |
//! | `GET /metrics` | every metric in Prometheus text format |
//! | `GET /status` | [`NodeStatus`](crate::service::NodeStatus) as JSON |
//! | `POST /admin/transfer-leader?region=R&node=N` | asks region R's leader to hand over to node N |
//!
//! Errors come back as JSON `{"error": "…"}` with a status code that says who should act:
//! 400 a bad request, 404 an unknown path or region, 405 a wrong method, 503 a condition that
//! may pass on retry (no leader, timeout), 500 anything else.

mod client;
mod recorder;
mod routes;
mod server;

pub use client::{HttpClientError, HttpResponse, StatusClient, RESPONSE_BYTES_MAX};
pub use recorder::{
    install_prometheus_recorder, BYTES_BUCKETS, COUNT_BUCKETS, LATENCY_BUCKETS_SECONDS,
};
pub use routes::{decode_hex, encode_hex};
pub use server::{StatusServer, HEADER_READ_TIMEOUT_MILLIS, HTTP_CONNECTIONS_MAX};

/// Counter: status-server requests, by `route` (`health`, `metrics`, `status`,
/// `transfer_leader`, `other`).
pub const HTTP_REQUESTS_TOTAL: &str = "flotilla_http_requests_total";
