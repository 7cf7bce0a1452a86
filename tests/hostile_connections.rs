//! Connections that hold the port without using it, against the real daemon:
//! a flood of sockets that send nothing, a connection left idle after a
//! call, and a client that stops answering in the middle of a request. Each
//! must be closed by the daemon while real clients keep being served
//! (src/connections.rs).

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_client::CapabilitiesClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::GetCapabilitiesRequest;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::WriteRequest;
use common::endpoints::JserveServe;
use common::loc;
use jserve::digest::{HashFunction, ObjectKind};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

/// How long the daemon gets to do what is asserted; far above the
/// configured timeouts, so only a daemon that never does it fails.
const BOUND: Duration = Duration::from_secs(60);

fn start(dir: &std::path::Path, service: Value) -> JserveServe {
    JserveServe::start_in(dir, service, None)
}

async fn capabilities(channel: Channel) -> Result<(), tonic::Status> {
    CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: String::new(),
        })
        .await
        .map(drop)
}

/// Waits until the server closes `socket` (end of file or a reset).
async fn closed_by_server(socket: &mut TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    tokio::time::timeout(BOUND, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the daemon closes the connection")
}

/// Opens `silent` sockets that send nothing, then has `clients` real
/// clients served one after the other; waits until the daemon closed every
/// silent socket.
async fn flood(serve: &JserveServe, silent: usize, clients: usize) {
    let mut sockets = Vec::new();
    for _ in 0..silent {
        sockets.push(TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap());
    }
    for _ in 0..clients {
        let served = tokio::time::timeout(BOUND, async {
            capabilities(common::channel(serve.port).await).await
        })
        .await;
        assert!(matches!(served, Ok(Ok(()))), "{served:?}\n{}", serve.log());
    }
    for socket in &mut sockets {
        closed_by_server(socket).await;
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_cannot_crowd_out_clients() {
    const LIMIT: usize = 20;
    const SILENT: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let serve = start(
        dir.path(),
        json!({"max connections": LIMIT, "handshake timeout": 2}),
    );
    // Ten times the limit of sockets that send nothing, yet a client that
    // comes after them is served, and each of them is closed: to make room,
    // or after the handshake timeout.
    flood(&serve, SILENT, 1).await;
    let open = open_descriptors(serve.group.pid());
    assert!(open < LIMIT + 64, "{open} descriptors open");
    assert!(
        serve.log().contains("serve and execute services started"),
        "{}",
        serve.log()
    );
}

/// A client-side stream that tells when the server closed the connection.
struct WatchedStream {
    inner: TcpStream,
    closed: Arc<Notify>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.closed.notify_one()
            }
            Poll::Ready(Err(_)) => self.closed.notify_one(),
            _ => {}
        }
        polled
    }
}

impl tokio::io::AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A channel over one connection, and what fires when the server closes it.
async fn watched_channel(port: u16) -> (Channel, Arc<Notify>) {
    let closed = Arc::new(Notify::new());
    let signal = closed.clone();
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let closed = signal.clone();
            async move {
                let inner = TcpStream::connect(("127.0.0.1", port)).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(WatchedStream {
                    inner,
                    closed,
                }))
            }
        }))
        .await
        .unwrap();
    (channel, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let serve = start(
        dir.path(),
        json!({"handshake timeout": 1, "idle timeout": 1}),
    );
    let port = serve.port;

    // A busy connection: an upload that sends its first half and waits.
    let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let hf = HashFunction::GitSha1;
    let digest = hf.digest_bytes(ObjectKind::File, &data).to_wire(hf);
    let name = format!(
        "uploads/00000000-0000-4000-8000-000000000001/blobs/{}/{}",
        digest.hash, digest.size_bytes
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let half = data.len() / 2;
    tx.send(WriteRequest {
        resource_name: name,
        write_offset: 0,
        finish_write: false,
        data: data[..half].to_vec(),
    })
    .await
    .unwrap();
    let (busy, busy_closed) = watched_channel(port).await;
    let upload = tokio::spawn(async move {
        ByteStreamClient::new(busy)
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().committed_size)
    });

    // An idle connection, opened after the upload started: one call, then
    // nothing, until the daemon closes it.
    let (idle, idle_closed) = watched_channel(port).await;
    capabilities(idle.clone()).await.unwrap();
    tokio::time::timeout(BOUND, idle_closed.notified())
        .await
        .expect("the idle connection is closed");
    assert!(serve.log().contains("serve and execute"));

    // The busy connection has been open longer than the idle timeout too,
    // but it carries a request: it is still there and the upload completes.
    tx.send(WriteRequest {
        resource_name: String::new(),
        write_offset: half as i64,
        finish_write: true,
        data: data[half..].to_vec(),
    })
    .await
    .unwrap();
    let committed = tokio::time::timeout(BOUND, upload)
        .await
        .expect("the upload ends")
        .unwrap();
    match committed {
        Ok(size) => assert_eq!(size, data.len() as i64),
        Err(status) => panic!("{status:?}\n{}", serve.log()),
    }
    drop(busy_closed);
}

/// One HPACK literal header field with a new name, never indexed.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x10);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_mid_request_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let serve = start(
        dir.path(),
        json!({"keepalive interval": 1, "keepalive timeout": 1}),
    );
    // By hand: the preface, settings, and the headers of a ByteStream Write
    // whose body never comes; then silence, pings unanswered.
    let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http
    literal(&mut headers, ":path", "/google.bytestream.ByteStream/Write");
    literal(&mut headers, ":authority", "localhost");
    literal(&mut headers, "content-type", "application/grpc");
    literal(&mut headers, "te", "trailers");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    hello.extend(frame(0x1, 0x4, 1, &headers));
    let mut socket = TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap();
    socket.write_all(&hello).await.unwrap();
    closed_by_server(&mut socket).await;
    // Others are still served.
    capabilities(common::channel(serve.port).await)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::pki();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &pki.server_cert).unwrap();
    std::fs::write(&key, &pki.server_key).unwrap();
    let serve = start(
        dir.path(),
        json!({"server cert": loc(&cert), "server key": loc(&key), "handshake timeout": 1}),
    );
    // One socket sends nothing; one starts a ClientHello record of 512
    // bytes and stops after its header.
    let mut silent = TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    closed_by_server(&mut silent).await;
    closed_by_server(&mut partial).await;
}

/// With the defaults and a 256-descriptor limit, more silent sockets than
/// the daemon has descriptors: the derived connection limit keeps it from
/// running out, clients are served, and every silent socket is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_flood_is_survived_with_the_defaults() {
    const DESCRIPTORS: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let serve = JserveServe::start_in(dir.path(), json!({}), Some(DESCRIPTORS));
    flood(&serve, 400, 3).await;
    let open = open_descriptors(serve.group.pid());
    assert!(open < DESCRIPTORS as usize / 2, "{open} descriptors open");
    assert!(
        !serve.log().contains("Too many open files"),
        "{}",
        serve.log()
    );
}
