//! The client against two scripted RESP nodes: a not-leader answer moves the cached leader
//! and the call is retried there; bad bytes from a node are a protocol error, not a panic;
//! the routing table comes from `FLOTILLA.REGIONS ALL` (every region of the cluster), or
//! from a node's own regions when it is an older server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use flotilla_client::resp::{decode, Value};
use flotilla_client::{Client, ClientConfig, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Script = Arc<dyn Fn(&[String]) -> Vec<u8> + Send + Sync>;

/// A node that answers each request with what `script` returns for its words.
async fn fake_node(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    // Requests are arrays of bulks, which the reply decoder reads as well.
                    while let Ok(Some(Value::Array(words))) = decode(&mut buf) {
                        let words: Vec<String> = words
                            .into_iter()
                            .map(|w| match w {
                                Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                                other => format!("{other:?}"),
                            })
                            .collect();
                        // The client routes keyed requests (`FLOTILLA.ROUTE id version
                        // conf_ver <request…>`); these nodes answer the request inside.
                        let words = match words.first().map(String::as_str) {
                            Some("FLOTILLA.ROUTE") if words.len() > 4 => words[4..].to_vec(),
                            _ => words,
                        };
                        if stream.write_all(&script(&words)).await.is_err() {
                            return;
                        }
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

/// One region over every key, said to be led by node 1.
const REGIONS: &[u8] = b"*1\r\n*6\r\n:1\r\n$0\r\n\r\n$0\r\n\r\n:1\r\n:1\r\n:1\r\n";

#[tokio::test]
async fn a_not_leader_answer_moves_the_call_and_the_cache_to_the_hinted_node() {
    let gets_at_one = Arc::new(AtomicUsize::new(0));
    let counter = gets_at_one.clone();
    let one = fake_node(Arc::new(move |w: &[String]| match w[0].as_str() {
        "FLOTILLA.NODE" => b":1\r\n".to_vec(),
        "FLOTILLA.REGIONS" => REGIONS.to_vec(),
        _ => {
            counter.fetch_add(1, Ordering::SeqCst);
            b"-TRYAGAIN region 1: not leader (leader on node 2); retry\r\n".to_vec()
        }
    }))
    .await;
    let two = fake_node(Arc::new(|w: &[String]| match (w[0].as_str(), w.get(1)) {
        ("FLOTILLA.NODE", _) => b":2\r\n".to_vec(),
        ("FLOTILLA.REGIONS", _) => REGIONS.to_vec(),
        ("GET", Some(k)) if k == "garbage" => b"?not resp\r\n".to_vec(),
        ("GET", Some(k)) if k == "wrongtype" => b":12\r\n".to_vec(),
        ("GET", _) => b"$5\r\nhello\r\n".to_vec(),
        _ => b"-ERR unexpected\r\n".to_vec(),
    }))
    .await;

    let client = Client::connect(ClientConfig::new([one.to_string(), two.to_string()]))
        .await
        .unwrap();
    assert_eq!(client.regions()[0].leader, Some(1));
    assert_eq!(client.get("k").await.unwrap(), Some(Bytes::from("hello")));
    assert_eq!(gets_at_one.load(Ordering::SeqCst), 1, "asked node 1 once");
    assert_eq!(client.regions()[0].leader, Some(2), "the hint is cached");
    // The next call goes straight to node 2.
    assert_eq!(client.get("k2").await.unwrap(), Some(Bytes::from("hello")));
    assert_eq!(gets_at_one.load(Ordering::SeqCst), 1);

    // Bad bytes and wrong reply types are protocol errors; the client keeps working.
    let err = client.get("garbage").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    let err = client.get("wrongtype").await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    assert_eq!(client.get("k3").await.unwrap(), Some(Bytes::from("hello")));
}

#[tokio::test]
async fn a_region_without_a_leader_times_out_as_no_leader() {
    let node = fake_node(Arc::new(|w: &[String]| match w[0].as_str() {
        "FLOTILLA.NODE" => b":1\r\n".to_vec(),
        "FLOTILLA.REGIONS" => REGIONS.to_vec(),
        _ => b"-TRYAGAIN region 1: not leader; retry\r\n".to_vec(),
    }))
    .await;
    let mut config = ClientConfig::new([node.to_string()]);
    config.call_timeout = std::time::Duration::from_millis(300);
    let client = Client::connect(config).await.unwrap();
    let started = std::time::Instant::now();
    let err = client.put("k", "v").await.unwrap_err();
    assert!(matches!(err, ClientError::NoLeader { region: 1 }), "{err}");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(150) && took < std::time::Duration::from_secs(2),
        "gave up after {took:?}, not at the call's timeout"
    );
}

/// One region over every key, said to be led by node 2.
const REGIONS_LED_BY_2: &[u8] = b"*1\r\n*6\r\n:1\r\n$0\r\n\r\n$0\r\n\r\n:1\r\n:1\r\n:2\r\n";

#[tokio::test]
async fn the_routing_table_covers_regions_the_asked_node_does_not_hold() {
    // Node 1 holds no replica (its own table is empty) but knows the cluster's regions;
    // the client learns from it that node 2 leads the region and goes there directly.
    let asked: Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
    let (log1, log2) = (asked.clone(), asked.clone());
    let one = fake_node(Arc::new(move |w: &[String]| {
        let arg = w.get(1).map(String::as_str);
        match (w[0].as_str(), arg) {
            ("FLOTILLA.NODE", _) => b":1\r\n".to_vec(),
            ("FLOTILLA.REGIONS", Some("ALL")) => {
                log1.lock().push("1: all".into());
                REGIONS_LED_BY_2.to_vec()
            }
            ("FLOTILLA.REGIONS", _) => b"*0\r\n".to_vec(),
            _ => {
                log1.lock().push(format!("1: {}", w[0]));
                b"-TRYAGAIN no region for the key here\r\n".to_vec()
            }
        }
    }))
    .await;
    // Node 2 is an older server: `ALL` is an error, its own table is the answer.
    let two = fake_node(Arc::new(move |w: &[String]| {
        let arg = w.get(1).map(String::as_str);
        match (w[0].as_str(), arg) {
            ("FLOTILLA.NODE", _) => b":2\r\n".to_vec(),
            ("FLOTILLA.REGIONS", Some("ALL")) => {
                log2.lock().push("2: all refused".into());
                b"-ERR wrong number of arguments\r\n".to_vec()
            }
            ("FLOTILLA.REGIONS", _) => {
                log2.lock().push("2: own".into());
                REGIONS_LED_BY_2.to_vec()
            }
            ("GET", _) => b"$5\r\nhello\r\n".to_vec(),
            _ => b"-ERR unexpected\r\n".to_vec(),
        }
    }))
    .await;

    let client = Client::connect(ClientConfig::new([one.to_string(), two.to_string()]))
        .await
        .unwrap();
    assert_eq!(
        *asked.lock(),
        vec!["1: all"],
        "the first table came from node 1"
    );
    assert_eq!(client.regions()[0].leader, Some(2));
    assert_eq!(client.get("k").await.unwrap(), Some(Bytes::from("hello")));
    assert_eq!(
        *asked.lock(),
        vec!["1: all"],
        "the read went straight to node 2"
    );
    // The next refresh asks node 2, which refuses `ALL` and gives its own table.
    asked.lock().clear();
    client.refresh_regions().await.unwrap();
    assert_eq!(*asked.lock(), vec!["2: all refused", "2: own"]);
    assert_eq!(client.regions().len(), 1);
}
