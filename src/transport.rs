//! The HTTP/1.1 transport: the accept loop, the connection cap, per-connection deadlines,
//! and the contract's JSON body on the errors hyper answers by itself.
//!
//! A connection is in one of four phases, each with its own deadline:
//! - reading a request head (from accept, or from the first byte after an idle spell):
//!   closed when the head is not complete within the header read timeout;
//! - handling (the router runs; a request body must arrive within the body read timeout);
//! - responding: closed when the client takes nothing for the idle timeout;
//! - idle between requests (keep-alive): closed after the idle timeout.
//!
//! hyper answers a request head it cannot parse (a bad byte, a URI or a head too long)
//! with a bare 400, 414 or 431 and closes the connection; it offers no way to change that
//! answer. The connection's stream recognises that answer as it is written and writes the
//! contract's JSON error, with an `x-request-id`, in its place.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Timeouts and limits of the HTTP transport (`bahi serve --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Time a client has to send a whole request head, from accept or from its first byte.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit between requests, and a response may wait for
    /// the client to take it.
    pub idle_timeout: Duration,
    /// Time a client has to send a whole request body, from the end of its head.
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait in the listen queue until one closes.
    pub max_connections: usize,
}

pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 60;
pub const DEFAULT_BODY_READ_TIMEOUT_SECONDS: u64 = 30;
/// The connection cap when the open-file limit leaves room for it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Descriptors kept back from the connection cap for the database, the log and outgoing
/// requests, when the cap is derived from the open-file limit.
pub const RESERVED_DESCRIPTORS: u64 = 128;

impl Default for TransportLimits {
    fn default() -> TransportLimits {
        TransportLimits {
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECONDS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECONDS),
            body_read_timeout: Duration::from_secs(DEFAULT_BODY_READ_TIMEOUT_SECONDS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The default connection cap: [`DEFAULT_MAX_CONNECTIONS`], lowered to fit under the
/// process's open-file limit (so that accepting never fails for want of descriptors).
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(RESERVED_DESCRIPTORS / 4);
            usize::try_from(room).unwrap_or(usize::MAX).min(DEFAULT_MAX_CONNECTIONS)
        }
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); None elsewhere.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Largest request head: room for a URI at hyper's own limit (just under 64 KiB) and
/// ordinary headers, so that an over-long URI is a 414 rather than a 431.
const MAX_HEAD_BYTES: usize = 96 * 1024;

/// Serves `router` on `listener` until `stop` completes; then stops accepting, lets the
/// requests in flight finish, closes idle connections, and returns when every connection
/// is gone.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: TransportLimits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max_connections));
    let closing = CancellationToken::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD_BYTES).keep_alive(true);
    let mut stop = std::pin::pin!(stop);
    loop {
        // At the cap, the next connection waits in the kernel's listen queue, holding no
        // descriptor of ours, until a served one closes.
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of descriptors or memory: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: builder.clone(),
            limits,
            metrics: metrics.clone(),
            closing: closing.clone(),
        };
        tokio::spawn(connection.run(stream, remote, permit));
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a permit until it ends: all of them back means all are gone.
    let _ = permits.acquire_many(max_connections as u32).await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

struct Connection {
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    limits: TransportLimits,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, remote: SocketAddr, _permit: OwnedSemaphorePermit) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(WatchedStream::new(stream, activity.clone(), self.metrics.clone()));
        let router = self.router;
        let body_read_timeout = self.limits.body_read_timeout;
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            service_activity.enter(Phase::Handling);
            let deadline = Instant::now() + body_read_timeout;
            let mut request = request.map(|body| Body::new(DeadlineBody::new(body, deadline)));
            request.extensions_mut().insert(ConnectInfo(remote));
            let answer = router.clone().oneshot(request);
            let activity = service_activity.clone();
            async move {
                let response = answer.await?;
                activity.enter(Phase::Responding);
                Ok::<_, Infallible>(response.map(|body| WatchedBody { inner: body, activity }))
            }
        });
        let connection = self.builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut draining = false;
        loop {
            let deadline = activity.deadline(&self.limits);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %remote, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(phase) = activity.expired(&self.limits) {
                        tracing::debug!(%remote, ?phase, "closing a connection that missed its deadline");
                        return;
                    }
                }
                () = self.closing.cancelled(), if !draining => {
                    // Between requests there is nothing to finish.
                    if matches!(activity.phase(), Phase::Idle | Phase::ReadingHead) {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ReadingHead = 0,
    Handling = 1,
    Responding = 2,
    Idle = 3,
}

/// A connection's phase and when it began (or, while responding or idle, when bytes last
/// moved). Touched only by the connection's own task (hyper polls the service, the bodies
/// and the stream there), so relaxed atomics suffice; they make it `Send`.
struct Activity {
    started: std::time::Instant,
    /// `milliseconds since started << 2 | phase`.
    state: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { started: std::time::Instant::now(), state: AtomicU64::new(Phase::ReadingHead as u64) }
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX >> 2)
    }

    fn enter(&self, phase: Phase) {
        self.state.store((self.now_millis() << 2) | phase as u64, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.state.load(Ordering::Relaxed) & 3 {
            0 => Phase::ReadingHead,
            1 => Phase::Handling,
            2 => Phase::Responding,
            _ => Phase::Idle,
        }
    }

    fn since(&self) -> Duration {
        Duration::from_millis(self.state.load(Ordering::Relaxed) >> 2)
    }

    fn on_read(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::ReadingHead);
        }
    }

    fn on_write(&self) {
        let phase = self.phase();
        if matches!(phase, Phase::Responding | Phase::Idle) {
            self.enter(phase);
        }
    }

    fn timeout(&self, limits: &TransportLimits) -> Option<Duration> {
        match self.phase() {
            Phase::ReadingHead => Some(limits.header_read_timeout),
            // The router bounds its own work and the body's arrival.
            Phase::Handling => None,
            Phase::Responding | Phase::Idle => Some(limits.idle_timeout),
        }
    }

    /// When to look again.
    fn deadline(&self, limits: &TransportLimits) -> Instant {
        let started = Instant::from_std(self.started);
        match self.timeout(limits) {
            Some(timeout) => started + self.since() + timeout,
            None => Instant::now() + limits.header_read_timeout.min(limits.idle_timeout),
        }
    }

    /// The phase whose deadline has passed, if any.
    fn expired(&self, limits: &TransportLimits) -> Option<Phase> {
        let timeout = self.timeout(limits)?;
        (self.started.elapsed() >= self.since() + timeout).then(|| self.phase())
    }
}

/// The TCP stream as hyper sees it: records progress for the deadlines, and writes the
/// JSON error in place of hyper's own bare answer to an unparsable request head.
struct WatchedStream {
    /// Taken only on drop, to linger after an error answer.
    stream: Option<TcpStream>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
    replacement: Option<Replacement>,
}

/// The JSON answer being written in place of hyper's bare one.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// How many of hyper's bytes it stands for.
    replaces: usize,
}

impl WatchedStream {
    fn new(stream: TcpStream, activity: Arc<Activity>, metrics: Arc<Metrics>) -> WatchedStream {
        WatchedStream { stream: Some(stream), activity, metrics, replacement: None }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        // Present until drop.
        Pin::new(self.stream.as_mut().unwrap_or_else(|| unreachable!("the stream is taken only on drop")))
    }
}

/// How long, and for how many bytes, a connection answered with an error stays open to
/// swallow what the client is still sending: closing on unread bytes resets the
/// connection, and a reset can discard the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

impl Drop for WatchedStream {
    fn drop(&mut self) {
        if self.replacement.is_none() {
            return;
        }
        let Some(mut stream) = self.stream.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(LINGER, async {
                let mut buffer = [0u8; 8192];
                let mut swallowed = 0;
                while swallowed < LINGER_BYTES {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(count) => swallowed += count,
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        let result = ready!(this.stream().poll_read(context, buffer));
        if buffer.filled().len() > before {
            this.activity.on_read();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() && matches!(this.activity.phase(), Phase::ReadingHead | Phase::Idle) {
            match automatic_error_response(buffer) {
                // What comes before hyper's answer (the end of an earlier response) goes as is.
                Some((start, _)) if start > 0 => return this.poll_write_through(context, &buffer[..start]),
                Some((_, status)) => {
                    let (status, bytes) = json_error_response(buffer, status);
                    this.metrics.record_status(status);
                    this.replacement = Some(Replacement { bytes, written: 0, replaces: buffer.len() });
                }
                None => {}
            }
        }
        if let Some(replacement) = &mut this.replacement
            && replacement.written < replacement.bytes.len()
        {
            while replacement.written < replacement.bytes.len() {
                let stream = Pin::new(this.stream.as_mut().unwrap_or_else(|| unreachable!("taken only on drop")));
                let written = ready!(stream.poll_write(context, &replacement.bytes[replacement.written..]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                replacement.written += written;
            }
            return Poll::Ready(Ok(replacement.replaces.min(buffer.len())));
        }
        this.poll_write_through(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(context)
    }

    // Not vectored: hyper then writes each response's bytes from one buffer, in order,
    // so that its own error answer is always the tail of what it hands over.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl WatchedStream {
    fn poll_write_through(&mut self, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(self.stream().poll_write(context, buffer))?;
        if written > 0 {
            self.activity.on_write();
        }
        Poll::Ready(Ok(written))
    }
}

/// Where hyper's own answer to an unparsable head starts in `buffer`, and its status.
///
/// That answer is the last thing hyper writes on a connection: a status line of 400, 414
/// or 431 and a head without a body. Every answer of the router carries `x-request-id`;
/// hyper's never does.
fn automatic_error_response(buffer: &[u8]) -> Option<(usize, u16)> {
    if !buffer.ends_with(b"\r\n\r\n") {
        return None;
    }
    // hyper answers in the version of the connection's last request: 1.1, or 1.0.
    let start = buffer.windows(9).rposition(|window| window == b"HTTP/1.1 " || window == b"HTTP/1.0 ")?;
    let head = &buffer[start..];
    let end_of_head = head.windows(4).position(|window| window == b"\r\n\r\n")?;
    if end_of_head + 4 != head.len() {
        return None;
    }
    let status = match head.get(9..13)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let lowercase = head.to_ascii_lowercase();
    if lowercase.windows(15).any(|window| window == b"\r\nx-request-id:") {
        return None;
    }
    Some((start, status))
}

/// The error class of a status: the body's `type`, named as OpenAI's and Anthropic's APIs
/// name theirs, so that their SDKs and the tools built for them read bahi's errors. The
/// precise reason is the body's `code` (docs/api.md has both tables).
pub fn error_class(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The contract's error for hyper's bare `status`, keeping hyper's `date`.
fn json_error_response(head: &[u8], status: u16) -> (u16, Vec<u8>) {
    let (reason, error_type, message) = match status {
        414 => ("URI Too Long", "uri_too_long", "the request URI is too long".to_owned()),
        431 => (
            "Request Header Fields Too Large",
            "request_header_fields_too_large",
            format!("the request head is larger than {MAX_HEAD_BYTES} bytes or has too many header fields"),
        ),
        _ => (
            "Bad Request",
            "invalid_request",
            "the request head is not valid HTTP/1.1 (method, URI, version or a header byte)".to_owned(),
        ),
    };
    let request_id = format!("req_{}", bahi_domain::ids::base62(&crate::identity::random_bytes::<12>()));
    let body = serde_json::json!({
        "error": { "type": error_class(status), "code": error_type, "message": message, "request_id": request_id }
    })
    .to_string();
    let date = std::str::from_utf8(head)
        .ok()
        .and_then(|text| text.split("\r\n").find(|line| line.to_ascii_lowercase().starts_with("date:")))
        .map(|line| format!("{line}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\n{date}\r\n{body}",
        body.len()
    );
    (status, response.into_bytes())
}

/// A request body that fails once its deadline passes unfinished.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made on the first wait only: most bodies arrive with their head.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant) -> DeadlineBody {
        DeadlineBody { inner, deadline, sleep: None }
    }
}

/// The request body did not arrive within the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyReadTimeout;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(context) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(context));
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` or one of its sources is a [`BodyReadTimeout`].
pub fn is_body_read_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyReadTimeout>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// A response body that marks the connection idle once it is fully handed to hyper.
struct WatchedBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(context));
        match &frame {
            None => self.activity.enter(Phase::Idle),
            Some(_) => self.activity.on_write(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        if self.activity.phase() == Phase::Responding {
            self.activity.enter(Phase::Idle);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hyper_s_own_answer_only() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 11:00:00 GMT\r\n\r\n";
        assert_eq!(automatic_error_response(bare), Some((0, 400)));
        let mut after_json = b"HTTP/1.1 200 OK\r\nx-request-id: a\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        after_json.extend_from_slice(bare);
        assert_eq!(automatic_error_response(&after_json), Some((after_json.len() - bare.len(), 400)));
        let ours = b"HTTP/1.1 400 Bad Request\r\nx-request-id: req_a\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error_response(ours), None);
        let older = b"HTTP/1.0 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(automatic_error_response(older), Some((0, 414)));
        let not_an_error = b"HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_error_response(not_an_error), None);
        assert_eq!(automatic_error_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"), None);
    }

    #[test]
    fn the_replacement_is_the_contract_s_error() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: D\r\n\r\n";
        let (status, bytes) = json_error_response(bare, 431);
        assert_eq!(status, 431);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("\r\ndate: D"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "request_header_fields_too_large");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let request_id = body["error"]["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("x-request-id: {request_id}")), "{head}");
        assert!(head.contains(&format!("content-length: {}", text.len() - head.len() - 4)), "{head}");
    }
}
