//! The metrics endpoint through the binary: `status_zone` counts a server's sessions,
//! `api` answers nginx Plus's JSON (connections, server zones, upstream peers with their
//! health checks) and the Prometheus text at /metrics, shared by every worker.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// An HTTP request to the api server: (status line, head, body).
fn request(port: u16, req: &str) -> (String, String, String) {
    let mut c = connect(port);
    c.write_all(req.as_bytes()).expect("request");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_string(), head.to_string(), body.to_string())
}

fn get(port: u16, path: &str) -> Value {
    let (status, head, body) = request(port, &format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", path));
    assert_eq!(status, "HTTP/1.1 200 OK", "{}", path);
    assert!(head.contains("Content-Type: application/json"), "{}", head);
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{}", head);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{}: {} in {}", path, e, body))
}

fn ask(port: u16) -> String {
    let mut c = connect(port);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn zones_peers_and_connections_are_counted_across_workers() {
    let live = sends_and_closes("A");
    let dead = free_port();
    let (front, api) = (free_port(), free_port());
    let s = Sluice::start_master(
        2,
        &format!(
            "events {{}}\nstream {{\n upstream u {{ zone u 64k; server 127.0.0.1:{live}; server 127.0.0.1:{dead} backup; }}\n \
             server {{ listen 127.0.0.1:{front}; proxy_pass u; status_zone front; \
             health_check interval=200ms; }}\n \
             server {{ listen 127.0.0.1:{api}; api write=off; }}\n}}\n"
        ),
    );
    assert!(wait_for(Duration::from_secs(10), || s.error_log().contains("peer is unhealthy")), "{}", s.error_log());
    for _ in 0..6 {
        assert_eq!(ask(front), "A");
    }
    let zones = get(api, "/api/9/stream/server_zones");
    let f = &zones["front"];
    assert_eq!(f["connections"], 6, "{}", zones);
    assert_eq!(f["sessions"]["2xx"], 6);
    assert_eq!(f["sessions"]["total"], 6);
    assert_eq!(f["sent"], 6, "one byte to each client");
    assert_eq!(f["processing"], 0);
    assert_eq!(get(api, "/api/9/stream/server_zones/front"), *f);
    assert_eq!(
        get(api, "/api/9/stream/server_zones?fields=connections"),
        serde_json::json!({"front": {"connections": 6}})
    );
    let n = get(api, "/api/9/nginx?fields=version,build");
    assert_eq!(n.as_object().map(|o| o.len()), Some(2), "{}", n);

    let u = get(api, "/api/9/stream/upstreams");
    let peers = u["u"]["peers"].as_array().expect("peers");
    assert_eq!(u["u"]["zone"], "u");
    assert_eq!(peers.len(), 2);
    let (p0, p1) = (&peers[0], &peers[1]);
    assert_eq!(p0["server"], format!("127.0.0.1:{}", live));
    assert_eq!(p0["state"], "up");
    assert_eq!(p0["backup"], false);
    assert_eq!(p0["connections"], 6, "{}", p0);
    assert_eq!(p0["received"], 6, "{}", p0);
    assert_eq!(p0["active"], 0);
    assert_eq!(p0["health_checks"]["fails"], 0);
    assert!(p0["health_checks"]["checks"].as_u64().unwrap_or(0) >= 1, "{}", p0);
    assert_eq!(p1["state"], "unhealthy", "{}", p1);
    assert_eq!(p1["backup"], true);
    assert_eq!(p1["connections"], 0);
    assert_eq!(p1["health_checks"]["last_passed"], false);
    assert!(p1["health_checks"]["unhealthy"].as_u64().unwrap_or(0) >= 1);
    assert!(p1["downstart"].as_str().is_some_and(|d| d.ends_with('Z')), "down since its check: {}", p1);
    assert!(p1["downtime"].as_u64().is_some(), "{}", p1);
    assert!(p0.get("downstart").is_none() && p0["downtime"] == 0, "{}", p0);
    assert_eq!(get(api, "/api/9/stream/upstreams/u/peers").as_array().map(|a| a.len()), Some(2));

    // The last client may see its end a moment before its worker counts the close (as
    // in nginx): read again until only this request is active.
    let mut c = get(api, "/api/9/connections");
    wait_for(Duration::from_secs(5), || {
        c = get(api, "/api/9/connections");
        c["active"] == 1
    });
    assert!(c["accepted"].as_u64().unwrap_or(0) >= 6, "{}", c);
    assert_eq!(c["active"], 1, "this request alone: {}", c);
    assert_eq!(c["dropped"], 0);
    let n = get(api, "/api/9/nginx");
    assert_eq!(n["version"], "1.22.1");
    assert_eq!(n["address"], "127.0.0.1", "the address the request came to");
    assert_eq!(n["generation"], 1);
    assert_eq!(get(api, "/api/"), serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8, 9]));

    let (status, _, body) = request(api, "GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "nginxplus_stream_server_zone_connections{server_zone=\"front\"} 6".to_string(),
        "nginxplus_stream_server_zone_sessions{code=\"2xx\",server_zone=\"front\"} 6".to_string(),
        format!("nginxplus_stream_upstream_server_state{{server=\"127.0.0.1:{}\",upstream=\"u\"}} 1", live),
        format!("nginxplus_stream_upstream_server_state{{server=\"127.0.0.1:{}\",upstream=\"u\"}} 6", dead),
        format!("nginxplus_stream_upstream_server_connections{{server=\"127.0.0.1:{}\",upstream=\"u\"}} 6", live),
    ] {
        assert!(body.lines().any(|l| l == line), "{} not in\n{}", line, body);
    }
}

#[test]
fn errors_are_nginx_plus_json() {
    let api = free_port();
    let _s = Sluice::start(&format!("events {{}}\nstream {{ server {{ listen 127.0.0.1:{api}; api; }} }}\n"));
    for (req, status, code) in [
        ("GET /api/9/stream/upstreams/nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", "UpstreamNotFound"),
        ("GET /api/9/stream/server_zones/nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", "ServerZoneNotFound"),
        ("GET /api/99/nginx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", "UnknownVersion"),
        ("GET /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", "PathNotFound"),
        ("DELETE /api/9/connections HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed", "MethodDisabled"),
        ("PUT /api/9/connections HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed", "MethodNotSupported"),
    ] {
        let (st, _, body) = request(api, req);
        assert_eq!(st, status, "{}", req);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["code"], code, "{}", body);
        assert_eq!(v["request_id"].as_str().map(str::len), Some(32));
    }
    // A head too long ends with 400; HEAD has no body.
    let (st, _, _) = request(api, &format!("GET /{} HTTP/1.1\r\n", "x".repeat(5000)));
    assert_eq!(st, "HTTP/1.1 400 Bad Request");
    let (st, head, body) = request(api, "HEAD /api/9/connections HTTP/1.1\r\n\r\n");
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert!(body.is_empty() && head.contains("Content-Length: "), "{}", head);
}

#[test]
fn directives_are_checked() {
    let cases = [
        ("server { listen 127.0.0.1:1; api bogus; }", "[emerg] invalid parameter \"bogus\" in T:3"),
        (
            "server { listen 127.0.0.1:1; return x; status_zone a; status_zone b; }",
            "[emerg] \"status_zone\" directive is duplicate in T:3",
        ),
        ("status_zone a;", "[emerg] \"status_zone\" directive is not allowed here in T:3"),
    ];
    for (body, want) in cases {
        let dir = TempDir::new("api-t");
        std::fs::write(dir.join("t.conf"), format!("events {{}}\nstream {{\n{}\n}}\n", body)).expect("write");
        let out = run(&["-t", "-p", &dir.prefix(), "-c", "t.conf"], dir.path());
        let err = console(&out.stderr).replace(&format!("{}t.conf", dir.prefix()), "T");
        assert!(err.contains(want), "{}\n wanted {}\n got {}", body, want, err);
    }
}
