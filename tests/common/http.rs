//! Plain HTTP/1.1 GETs, for the metrics listener.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// GET `path`: the status line, the content type, the body.
pub fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers end");
    let status = head.lines().next().unwrap().to_string();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of the sample written exactly as `sample` (name and labels) in
/// a metrics exposition.
pub fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The metrics address a daemon logged at start.
pub fn metrics_address(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("metrics at http://"))?;
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest.split('/').next()?.parse().ok()
}
