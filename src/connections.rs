//! Connection hygiene on the gRPC port: a bound on open connections, and
//! timeouts that close connections nobody uses.
//!
//! tonic serves whatever connections it is handed, for as long as the peer
//! keeps them open; a flood of sockets that send nothing would hold
//! descriptors and memory forever. Here the accept loop hands tonic
//! [`Conn`]s, each of which knows how many requests it carries (counted by
//! [`activity_layer`]) and fails its next read once it has been unused too
//! long:
//!
//! * before its first request, after `handshake timeout` (a TLS handshake or
//!   HTTP/2 preface that never comes, or a socket that sends nothing);
//! * between requests, after `idle timeout`;
//! * at once when the connection limit is reached and a new connection
//!   arrives: the longest-unused idle connection makes room (those that never
//!   sent a request first). Only when every connection carries a request does
//!   a new one wait.
//!
//! Connections with requests in flight are never closed by this module;
//! HTTP/2 keepalive pings (configured on the tonic server) end those whose
//! peer stopped answering.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TlsConnectInfo};

use crate::hold_layer::{HoldLayer, Holder};

/// How connections are bounded (the `"remote service"` keys of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Connections open at once; `None` derives it from the descriptor limit.
    pub max_connections: Option<usize>,
    /// How long a connection may stay open before its first request.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open without a request in flight.
    pub idle_timeout: Duration,
    /// How often the server pings a connection's peer (HTTP/2 keepalive).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            max_connections: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Descriptors kept back for files, git and child processes when the
/// connection limit is derived from the descriptor limit.
const RESERVED_DESCRIPTORS: u64 = 256;
/// The derived connection limit never exceeds this.
const MAX_DERIVED_CONNECTIONS: u64 = 4096;

/// Raises the soft descriptor limit to the hard one (as Go's runtime does for
/// every server) and returns the connection limit to use: the configured one,
/// or half of what the descriptors allow beyond a reserve.
pub fn connection_limit(policy: &ConnectionPolicy) -> usize {
    let nofile = raise_descriptor_limit();
    if let Some(max) = policy.max_connections {
        return max;
    }
    let derived =
        (nofile.saturating_sub(RESERVED_DESCRIPTORS) / 2).clamp(16, MAX_DERIVED_CONNECTIONS);
    derived as usize
}

fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The state of one connection, shared by its [`Conn`], the requests it
/// carries and the registry.
pub struct ConnState {
    peer: Option<SocketAddr>,
    active: AtomicUsize,
    requests: AtomicU64,
    idle_since: Mutex<Instant>,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnState {
    /// When the connection is to be closed if nothing changes; `None` while
    /// requests are in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = if self.requests.load(Ordering::Acquire) == 0 {
            self.handshake_timeout
        } else {
            self.idle_timeout
        };
        Some(since + timeout)
    }

    fn why_closed(&self) -> String {
        if self.evicted.load(Ordering::Acquire) {
            "to make room: the connection limit is reached".to_string()
        } else if self.requests.load(Ordering::Acquire) == 0 {
            format!(
                "no request within the handshake timeout ({} s)",
                self.handshake_timeout.as_secs_f64()
            )
        } else {
            format!(
                "idle for the idle timeout ({} s)",
                self.idle_timeout.as_secs_f64()
            )
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock is set before the count can reach zero, so a reader
        // that sees no requests never sees an older clock.
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake();
        }
    }
}

/// What tonic puts into every request's extensions for a [`Conn`].
#[derive(Clone)]
pub struct ConnInfo(pub Arc<ConnState>);

/// The client's IP address of a request that came through a [`Conn`].
pub fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    let info = extensions.get::<ConnInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<ConnInfo>>()
            .map(|tls| tls.get_ref())
    })?;
    info.0.peer.map(|a| a.ip())
}

/// An accepted connection, closed by failing its reads once unused too long.
pub struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    closed: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Whether the connection is to be closed now; otherwise arranges to be
    /// woken when that may change.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed || self.state.evicted.load(Ordering::Acquire) {
            if !self.closed {
                self.closed = true;
                tracing::debug!(peer = ?self.state.peer, "closing a connection: {}", self.state.why_closed());
            }
            return true;
        }
        {
            let mut waker = self.state.waker.lock().unwrap_or_else(|e| e.into_inner());
            match waker.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
        }
        loop {
            let Some(deadline) = self.state.deadline() else {
                return false;
            };
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // The timer fired for the deadline seen then; look again.
            if self.state.deadline().is_some_and(|d| d <= Instant::now()) {
                self.closed = true;
                tracing::debug!(peer = ?self.state.peer, "closing a connection: {}", self.state.why_closed());
                return true;
            }
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                this.state.why_closed(),
            )));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The open connections, for choosing one to close at the limit.
#[derive(Default)]
struct Registry(Mutex<Vec<Weak<ConnState>>>);

impl Registry {
    fn register(&self, state: &Arc<ConnState>) {
        let mut conns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(state));
    }

    /// Closes the idle connection unused the longest, preferring those that
    /// never sent a request. False if every connection is busy.
    fn evict_one(&self) -> bool {
        let conns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.active.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| {
                let served = c.requests.load(Ordering::Acquire) > 0;
                (
                    served,
                    *c.idle_since.lock().unwrap_or_else(|e| e.into_inner()),
                )
            });
        match victim {
            Some(victim) => {
                victim.evicted.store(true, Ordering::Release);
                victim.wake();
                true
            }
            None => false,
        }
    }
}

/// Accepts connections on `listener` in a task of its own and hands them,
/// bounded and timed as `policy` says, to the returned stream for tonic. The
/// task ends, closing the listener, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    policy: &ConnectionPolicy,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let limit = connection_limit(policy);
    let (tx, rx) = mpsc::channel(1);
    let acceptor = Acceptor {
        listener,
        permits: Arc::new(Semaphore::new(limit)),
        limit,
        registry: Registry::default(),
        handshake_timeout: policy.handshake_timeout,
        idle_timeout: policy.idle_timeout,
    };
    tokio::spawn(acceptor.run(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    registry: Registry,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

/// A warning repeated at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Acceptor {
    async fn run(self, tx: mpsc::Sender<std::io::Result<Conn>>) {
        let mut last_warning: Option<Instant> = None;
        let mut warn = |message: String| {
            if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                last_warning = Some(Instant::now());
                tracing::warn!("{message}");
            }
        };
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: accepting again at once would spin.
                    warn(format!("cannot accept connections: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!("accepting a connection failed: {e}");
                    continue;
                }
            };
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !self.registry.evict_one() {
                        warn(format!(
                            "{} connections, all with requests in flight: new connections wait",
                            self.limit
                        ));
                    }
                    tokio::select! {
                        permit = self.permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::new(ConnState {
                peer: Some(peer),
                active: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                idle_since: Mutex::new(Instant::now()),
                evicted: AtomicBool::new(false),
                waker: Mutex::new(None),
                handshake_timeout: self.handshake_timeout,
                idle_timeout: self.idle_timeout,
            });
            self.registry.register(&state);
            let conn = Conn {
                io: stream,
                timer: Box::pin(tokio::time::sleep_until(Instant::now())),
                state,
                closed: false,
                _permit: permit,
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    }
}

/// Counts each request on its connection from its arrival until its
/// response, streams included, is done.
pub fn activity_layer() -> HoldLayer<Activity> {
    HoldLayer(Activity)
}

#[derive(Clone, Copy)]
pub struct Activity;

impl Holder for Activity {
    type Hold = InFlight;

    fn hold<B>(
        &self,
        request: &http::Request<B>,
    ) -> Pin<Box<dyn Future<Output = Option<InFlight>> + Send>> {
        let extensions = request.extensions();
        let info = extensions.get::<ConnInfo>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(|tls| tls.get_ref())
        });
        let in_flight = info.map(|info| info.0.begin());
        Box::pin(std::future::ready(in_flight))
    }
}
