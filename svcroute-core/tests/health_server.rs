//! The health-check server over real sockets on 127.0.0.1: answers, updates, closing, bind
//! failures and bad requests.

#![cfg(feature = "health-server")]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::{Value, json};
use svcroute_core::State;
use svcroute_core::health::server::{HealthCheckError, HealthCheckServer};
use svcroute_core::model::{IpFamily, ProxyConfig, api};
use svcroute_core::watch::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((LOCALHOST, 0)).expect("test helper");
    l.local_addr().expect("test helper").port()
}

fn state() -> State {
    State::new(ProxyConfig {
        node_name: "here".into(),
        ip_families: vec![IpFamily::IPv4],
        ..ProxyConfig::default()
    })
    .expect("test helper")
}

fn lb(name: &str, cluster_ip: &str, hc: u16, node_port: u16) -> Event<api::Service> {
    Event::Apply(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "clusterIP": cluster_ip,
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": hc,
                     "ports": [{"name": "http", "port": 80, "nodePort": node_port}]}
        }))
        .expect("test helper"),
    )
}

fn slice(svc: &str, endpoints: &[(&str, &str)]) -> Event<api::EndpointSlice> {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node}))
        .collect();
    Event::Apply(
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-1"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": endpoints
        }))
        .expect("test helper"),
    )
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("test helper")
    }
}

/// Sends `request` on `stream` and reads the reply until the server closes.
async fn exchange(mut stream: TcpStream, request: &[u8]) -> Reply {
    stream.write_all(request).await.expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read reply");
    let text = String::from_utf8(raw).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .expect("status code")
        .parse()
        .expect("numeric status");
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").expect("header line");
            (n.to_string(), v.to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(port: u16, path: &str) -> Reply {
    let stream = TcpStream::connect((LOCALHOST, port))
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nUser-Agent: lb\r\n\r\n");
    exchange(stream, request.as_bytes()).await
}

#[tokio::test]
async fn serves_updates_and_closes() {
    let (hc, np) = (free_port(), free_port());
    let mut s = state();
    s.apply(lb("web", "10.96.0.1", hc, np)).unwrap();
    s.apply(slice("web", &[("10.0.0.1", "here"), ("10.0.0.2", "there")]))
        .unwrap();
    let _ = s.take_changes();

    let mut server = HealthCheckServer::new([LOCALHOST]);
    let errors = server.update(s.desired()).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.local_addresses(hc), [SocketAddr::new(LOCALHOST, hc)]);

    // One local ready endpoint: 200, any path.
    for path in ["/", "/healthz", "/anything?x=1"] {
        let r = get(hc, path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("1"));
        assert_eq!(
            r.header("Content-Length"),
            Some(r.body.len().to_string().as_str())
        );
        assert_eq!(
            r.json(),
            json!({"service": {"namespace": "ns", "name": "web"},
                   "localEndpoints": 1, "serviceProxyHealthy": true})
        );
    }

    // A connection opened before the update is answered after it, by the same listener,
    // with the new count: the endpoint moved away, so 503.
    let early = TcpStream::connect((LOCALHOST, hc)).await.unwrap();
    s.apply(slice(
        "web",
        &[("10.0.0.1", "there"), ("10.0.0.2", "there")],
    ))
    .unwrap();
    let _ = s.take_changes();
    let errors = server.update(s.desired()).await;
    assert!(errors.is_empty(), "{errors:?}");
    let r = exchange(early, b"GET / HTTP/1.1\r\nHost: node\r\n\r\n").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["localEndpoints"], 0);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("0"));

    // Back on this node, twice.
    s.apply(slice("web", &[("10.0.0.1", "here"), ("10.0.0.2", "here")]))
        .unwrap();
    let _ = s.take_changes();
    assert!(server.update(s.desired()).await.is_empty());
    let r = get(hc, "/").await;
    assert_eq!(
        (r.status, r.json()["localEndpoints"].clone()),
        (200, json!(2))
    );

    // The proxy itself unhealthy: 503 whatever the count.
    server.set_proxy_healthy(false);
    let r = get(hc, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["serviceProxyHealthy"], false);
    assert_eq!(r.json()["localEndpoints"], 2);
    server.set_proxy_healthy(true);

    // HEAD: the same head, no body.
    let stream = TcpStream::connect((LOCALHOST, hc)).await.unwrap();
    let r = exchange(stream, b"HEAD / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_ne!(r.header("Content-Length"), Some("0"));

    // The Service is deleted: once update returns, the port is closed.
    let svc = match lb("web", "10.96.0.1", hc, np) {
        Event::Apply(svc) => svc,
        _ => unreachable!(),
    };
    s.apply(Event::Delete(svc)).unwrap();
    let _ = s.take_changes();
    assert!(server.update(s.desired()).await.is_empty());
    assert!(server.serving().is_empty());
    let err = TcpStream::connect((LOCALHOST, hc)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    // And it can be opened again right away.
    s.apply(lb("web", "10.96.0.1", hc, np)).unwrap();
    let _ = s.take_changes();
    assert!(server.update(s.desired()).await.is_empty());
    assert_eq!(get(hc, "/").await.status, 200);
    server.shutdown().await;
    let err = TcpStream::connect((LOCALHOST, hc)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_does_not_stop_the_others() {
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (free, np1, np2) = (free_port(), free_port(), free_port());
    let mut s = state();
    s.apply(lb("blocked", "10.96.0.1", taken_port, np1))
        .unwrap();
    s.apply(lb("web", "10.96.0.2", free, np2)).unwrap();
    s.apply(slice("web", &[("10.0.0.1", "here")])).unwrap();
    let _ = s.take_changes();

    let mut server = HealthCheckServer::new([LOCALHOST]);
    let errors = server.update(s.desired()).await;
    match errors.as_slice() {
        [
            HealthCheckError::Bind {
                service,
                port,
                address,
                source,
            },
        ] => {
            assert_eq!(service.to_string(), "ns/blocked");
            assert_eq!(*port, taken_port);
            assert_eq!(*address, SocketAddr::new(LOCALHOST, taken_port));
            assert_eq!(source.kind(), ErrorKind::AddrInUse);
        }
        other => panic!("expected one bind error, got {other:?}"),
    }
    let message = errors[0].to_string();
    assert!(message.contains("ns/blocked") && message.contains(&taken_port.to_string()));
    assert_eq!(get(free, "/").await.status, 200);
    assert_eq!(server.serving().keys().copied().collect::<Vec<_>>(), [free]);

    // Freed: the next update opens it.
    drop(taken);
    assert!(server.update(s.desired()).await.is_empty());
    let r = get(taken_port, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["service"]["name"], "blocked");
}

#[tokio::test]
async fn garbage_is_answered_400_and_oversized_heads_431() {
    let (hc, np) = (free_port(), free_port());
    let mut s = state();
    s.apply(lb("web", "10.96.0.1", hc, np)).unwrap();
    let _ = s.take_changes();
    let mut server = HealthCheckServer::new([LOCALHOST]);
    assert!(server.update(s.desired()).await.is_empty());

    let stream = TcpStream::connect((LOCALHOST, hc)).await.unwrap();
    let r = exchange(stream, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    assert_eq!(r.status, 400);

    let stream = TcpStream::connect((LOCALHOST, hc)).await.unwrap();
    let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
    while huge.len() < 9000 {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let r = exchange(stream, &huge).await;
    assert_eq!(r.status, 431);

    // A client that closes without a full request gets nothing, and the port keeps serving.
    let mut stream = TcpStream::connect((LOCALHOST, hc)).await.unwrap();
    stream.write_all(b"GET / HT").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(get(hc, "/").await.status, 503);
    server.shutdown().await;
}

#[tokio::test]
async fn the_default_server_listens_on_both_families() {
    // Only where this host has IPv6.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return;
    }
    let (hc, np) = (free_port(), free_port());
    let mut s = state();
    s.apply(lb("web", "10.96.0.1", hc, np)).unwrap();
    s.apply(slice("web", &[("10.0.0.1", "here")])).unwrap();
    let _ = s.take_changes();
    // 0.0.0.0 and [::] on one port: the IPv6 socket is IPv6-only, so both bind.
    let mut server = HealthCheckServer::default();
    let errors = server.update(s.desired()).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.local_addresses(hc).len(), 2);
    assert_eq!(get(hc, "/").await.status, 200);
    let v6 = TcpStream::connect(("::1", hc)).await.unwrap();
    let r = exchange(v6, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}
