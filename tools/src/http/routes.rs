//! Which request gets which answer. Kept apart from the socket handling so that the routing
//! reads as one table.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::HTTP_REQUESTS_TOTAL;
use crate::service::{ServiceError, StatusSource};

/// What every request handler can see.
pub struct State {
    /// The node's status and admin actions.
    pub status: Arc<dyn StatusSource>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// The answer to `method path?query`.
pub async fn route(
    state: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let (name, allowed) = match path {
        "/health" => ("health", Method::GET),
        "/metrics" => ("metrics", Method::GET),
        "/status" => ("status", Method::GET),
        "/admin/transfer-leader" => ("transfer_leader", Method::POST),
        _ => {
            metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => "other").increment(1);
            return error(StatusCode::NOT_FOUND, &format!("no route {path}"));
        }
    };
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => name).increment(1);
    if *method != allowed && !(allowed == Method::GET && *method == Method::HEAD) {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} takes {allowed}"),
        );
        if let Ok(v) = allowed.as_str().parse() {
            resp.headers_mut().insert(ALLOW, v);
        }
        return resp;
    }
    match name {
        "health" => body(StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "metrics" => body(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            Bytes::from(state.metrics.render()),
        ),
        "status" => json(StatusCode::OK, &state.status.status()),
        _ => transfer_leader(state, query).await,
    }
}

async fn transfer_leader(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let (region, node) = match (query_u64(query, "region"), query_u64(query, "node")) {
        (Ok(r), Ok(n)) => (r, n),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.transfer_leader(region, node).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "region": region, "node": node }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// The HTTP status for a service error: who has to act, and whether a retry may help.
fn status_of(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ServiceError::RegionNotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The value of `key` in a query string of decimal numbers (`region=3&node=2`).
fn query_u64(query: Option<&str>, key: &str) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| format!("missing query parameter {key}"))?;
    value
        .parse()
        .map_err(|_| format!("query parameter {key} must be an unsigned integer, got {value:?}"))
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut v) => {
            v.push(b'\n');
            body(status, JSON, Bytes::from(v))
        }
        Err(e) => body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            Bytes::from(format!("{e}\n")),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        assert_eq!(query_u64(Some("region=3&node=2"), "node"), Ok(2));
        assert_eq!(query_u64(Some("node=2&region=3"), "region"), Ok(3));
        assert!(query_u64(Some("region=x"), "region")
            .unwrap_err()
            .contains("unsigned integer"));
        assert!(query_u64(None, "region").unwrap_err().contains("missing"));
        assert!(query_u64(Some("region=-1"), "region").is_err());
    }
}
