//! Which request gets which answer. Kept apart from the socket handling so that the routing
//! reads as one table.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use super::HTTP_REQUESTS_TOTAL;
use crate::service::{AddNodeRequest, ServiceError, StatusSource};
use flotilla_region::node::NodeAddresses;
use std::net::SocketAddr;

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
        "/admin/split" => ("split", Method::POST),
        "/admin/merge" => ("merge", Method::POST),
        "/admin/add-learner" => ("add_learner", Method::POST),
        "/admin/remove-replica" => ("remove_replica", Method::POST),
        "/admin/move-replica" => ("move_replica", Method::POST),
        "/admin/add-node" => ("add_node", Method::POST),
        "/admin/remove-node" => ("remove_node", Method::POST),
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
        "split" => split(state, query).await,
        "merge" => merge(state, query).await,
        "add_learner" => add_learner(state, query).await,
        "remove_replica" => remove_replica(state, query).await,
        "move_replica" => move_replica(state, query).await,
        "add_node" => add_node(state, query).await,
        "remove_node" => remove_node(state, query).await,
        _ => transfer_leader(state, query).await,
    }
}

/// `POST /admin/split?region=R[&key=HEX]`: the key in hexadecimal (keys are bytes); none
/// splits at the middle of the region's data.
async fn split(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let region = match query_u64(query, "region") {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let key = match query_param(query, "key") {
        None => None,
        Some(hex) => match decode_hex(hex) {
            Ok(k) => Some(Bytes::from(k)),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    match state.status.split(region, key).await {
        Ok(ids) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "region": region, "new_regions": ids }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// `POST /admin/merge?source=S&target=T`.
async fn merge(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let (source, target) = match (query_u64(query, "source"), query_u64(query, "target")) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.merge(source, target).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "source": source, "target": target }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// `POST /admin/add-learner?region=R&node=N`: answers the new replica's peer id.
async fn add_learner(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let (region, node) = match (query_u64(query, "region"), query_u64(query, "node")) {
        (Ok(r), Ok(n)) => (r, n),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.add_learner(region, node).await {
        Ok(peer) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "region": region, "node": node, "peer": peer }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// `POST /admin/remove-replica?region=R&node=N`.
async fn remove_replica(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let (region, node) = match (query_u64(query, "region"), query_u64(query, "node")) {
        (Ok(r), Ok(n)) => (r, n),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.remove_replica(region, node).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "region": region, "node": node }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// `POST /admin/move-replica?region=R&from=A&to=B[&joint=true]`: answers once the move is
/// done (`joint`: the voter moves through a joint configuration).
async fn move_replica(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let (region, from, to) = match (
        query_u64(query, "region"),
        query_u64(query, "from"),
        query_u64(query, "to"),
    ) {
        (Ok(r), Ok(f), Ok(t)) => (r, f, t),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, &e)
        }
    };
    if from == to {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("a replica cannot move from node {from} to itself"),
        );
    }
    let joint = match query_bool(query, "joint") {
        Ok(j) => j,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.move_replica(region, from, to, joint).await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({
                "ok": true, "region": region, "from": from, "to": to, "joint": joint,
            }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

/// `POST /admin/add-node?id=N&raft_addr=A[&client_addr=B][&status_addr=C][&cluster_id=K]`:
/// answers the directory (`nodes`). `cluster_id` is sent by a node joining by itself.
async fn add_node(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let req = match add_node_request(query) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.add_node(req).await {
        Ok(nodes) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "node": req.id, "nodes": nodes }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

fn add_node_request(query: Option<&str>) -> Result<AddNodeRequest, String> {
    let id = query_u64(query, "id")?;
    let addr = |name: &str| -> Result<Option<SocketAddr>, String> {
        query_param(query, name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("query parameter {name} must be IP:PORT, got {v:?}"))
            })
            .transpose()
    };
    let raft_addr = addr("raft_addr")?.ok_or("missing query parameter raft_addr")?;
    let cluster_id = match query_param(query, "cluster_id") {
        None => None,
        Some(_) => Some(query_u64(query, "cluster_id")?),
    };
    Ok(AddNodeRequest {
        id,
        addresses: NodeAddresses {
            raft_addr: Some(raft_addr),
            client_addr: addr("client_addr")?,
            status_addr: addr("status_addr")?,
        },
        cluster_id,
    })
}

/// `POST /admin/remove-node?id=N`: marks the node removing; answers its entry.
async fn remove_node(state: &State, query: Option<&str>) -> Response<Full<Bytes>> {
    let id = match query_u64(query, "id") {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match state.status.remove_node(id).await {
        Ok(entry) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "node": id, "state": entry.state.as_str() }),
        ),
        Err(e) => error(status_of(&e), &e.to_string()),
    }
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Bytes from lowercase or uppercase hexadecimal.
pub fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!(
            "a hex key has an even number of digits, got {}",
            hex.len()
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("not a hex key: {hex:?}"))
        })
        .collect()
}

/// Lowercase hexadecimal of `bytes` (for `key=` in `/admin/split`).
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// An optional `true`/`false` query parameter (absent: false).
fn query_bool(query: Option<&str>, key: &str) -> Result<bool, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v);
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(format!(
            "query parameter {key} must be true or false, got {v:?}"
        )),
    }
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

    #[test]
    fn add_node_queries() {
        let r = add_node_request(Some("id=4&raft_addr=127.0.0.1:9004&cluster_id=7")).unwrap();
        assert_eq!((r.id, r.cluster_id), (4, Some(7)));
        assert_eq!(
            r.addresses.raft_addr,
            Some("127.0.0.1:9004".parse().unwrap())
        );
        assert_eq!(r.addresses.client_addr, None);
        let e = add_node_request(Some("id=4")).unwrap_err();
        assert!(e.contains("raft_addr"), "{e}");
        let e = add_node_request(Some("id=4&raft_addr=nowhere")).unwrap_err();
        assert!(e.contains("IP:PORT"), "{e}");
        let e = add_node_request(Some("id=4&raft_addr=127.0.0.1:1&cluster_id=x")).unwrap_err();
        assert!(e.contains("cluster_id"), "{e}");
    }

    #[test]
    fn hex_keys_round_trip_and_bad_ones_are_errors() {
        let key = [0u8, 0xff, b'a', 0x10];
        assert_eq!(decode_hex(&encode_hex(&key)), Ok(key.to_vec()));
        assert_eq!(decode_hex("00FFaa"), Ok(vec![0, 0xff, 0xaa]));
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("é1").is_err());
        assert_eq!(decode_hex(""), Ok(vec![]));
    }
}
