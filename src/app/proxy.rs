//! The inference proxy: a client's OpenAI or Anthropic request, with a bahi key or agent
//! token, is authenticated, rate limited, held for (budget and credit), forwarded to the
//! model's upstream, relayed back as it arrives, and settled exactly once from the
//! upstream's own usage.
//!
//! The upstream is driven by a task of its own (`pump`), never by the client's response:
//! a client that leaves mid-stream drops only its end of a channel, and the task goes on
//! reading the upstream (for at most the drain time) to learn the usage, then settles.

use std::sync::Arc;
use std::time::Duration;

use bahi_domain::billing::{Provider, UsageSource, UsageStatus, call_cost};
use bahi_domain::credential::Scope;
use bahi_domain::ids::CallId;
use bahi_domain::rate_limit::RateDecision;
use bahi_domain::{Command, Money};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use memchr::memmem;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::models::{self, Upstream};
use super::principal::{self, Presented};
use super::{AppError, AppResult, REQUEST_ID, Services};
pub use crate::config::ProxyLimits;
use crate::ledger::Actor;

/// The node's proxy: one upstream HTTP client (connection pools per upstream), and the cap
/// on calls in flight.
pub struct ProxyRuntime {
    pub limits: ProxyLimits,
    client: reqwest::Client,
    streams: Arc<Semaphore>,
}

impl ProxyRuntime {
    pub fn new(limits: ProxyLimits) -> anyhow::Result<ProxyRuntime> {
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.read_timeout)
            // bahi relays bytes as they come; decompressing would make it buffer.
            .no_gzip()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ProxyRuntime { limits, client, streams: Arc::new(Semaphore::new(limits.max_streams)) })
    }
}

/// Which provider endpoint a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ChatCompletions,
    Embeddings,
    Messages,
}

impl Route {
    pub fn provider(self) -> Provider {
        match self {
            Route::ChatCompletions | Route::Embeddings => Provider::OpenAi,
            Route::Messages => Provider::Anthropic,
        }
    }

    fn upstream_path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/chat/completions",
            Route::Embeddings => "/embeddings",
            Route::Messages => "/v1/messages",
        }
    }

    fn client_path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Messages => "/v1/messages",
        }
    }
}

/// The client's headers that go on to the upstream: only those that choose the provider's
/// API version and features (`PASSED_HEADERS`), never its credentials.
#[derive(Debug, Clone, Default)]
pub struct PassedHeaders(pub Vec<(&'static str, String)>);

/// The names of `PassedHeaders`.
pub const PASSED_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta", "openai-beta"];

/// The upstream answer's head as the client gets it.
#[derive(Debug)]
struct Head {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
}

/// What the client gets: the upstream's status and content type, then the body as it comes.
pub struct Proxied {
    pub call_id: CallId,
    pub status: u16,
    pub content_type: Option<String>,
    /// The upstream's `retry-after`, so that an SDK backs off as the upstream asked.
    pub retry_after: Option<String>,
    pub body: mpsc::Receiver<Bytes>,
    pub rate: RateDecision,
}

/// A refusal before anything was forwarded, with the rate decision when one was taken.
pub struct Refused {
    pub error: AppError,
    pub rate: Option<RateDecision>,
}

impl From<AppError> for Refused {
    fn from(error: AppError) -> Refused {
        Refused { error, rate: None }
    }
}

/// Proxies one call. Refusals come before anything is held or forwarded, except an
/// upstream that cannot be reached, whose hold is released at once.
pub async fn proxy(
    services: &Arc<Services>,
    presented: &Presented,
    route: Route,
    body: Bytes,
    passed_headers: PassedHeaders,
) -> Result<Proxied, Refused> {
    let (principal, rate) = principal::admit(services, presented).await?;
    let with_rate = |error: AppError| Refused { error, rate: Some(rate) };
    principal.require(Scope::Inference).map_err(with_rate)?;
    let request = ClientRequest::parse(&body, route).map_err(with_rate)?;
    let upstream = models::upstream(services, &request.model).map_err(with_rate)?;
    if upstream.provider != route.provider() {
        return Err(with_rate(AppError::invalid_request(format!(
            "model {:?} is served by the {} API: call it at {}",
            request.model,
            upstream.provider.as_str(),
            if upstream.provider == Provider::Anthropic { "/v1/messages" } else { "/v1/chat/completions" }
        ))));
    }
    let permit = services.proxy.streams.clone().try_acquire_owned().map_err(|_| {
        with_rate(AppError::unavailable("too many proxied calls in flight on this node; retry shortly"))
    })?;
    let hold = request.hold(&upstream).map_err(with_rate)?;
    let (model, streaming) = (request.model.clone(), request.streaming);
    let strip_usage_chunk = streaming && route == Route::ChatCompletions && !request.client_wants_usage;
    let forwarded = request.forwarded_body(&upstream).map_err(with_rate)?;
    // Last of the checks: nothing is held for a call that is refused before it leaves.
    let (call_id, _) = super::billing::place_hold(services, &principal, &model, Some(hold)).await.map_err(with_rate)?;
    let call = Call {
        services: services.clone(),
        call_id: call_id.clone(),
        model,
        route,
        streaming,
        strip_usage_chunk,
        estimated_input_tokens: estimate_tokens(body.len()),
        request_id: REQUEST_ID.try_with(Clone::clone).unwrap_or_default(),
    };
    let (head_sender, head) = oneshot::channel();
    let (body_sender, body_receiver) = mpsc::channel(BODY_CHANNEL_CHUNKS);
    tokio::spawn(pump(call, upstream, (forwarded, passed_headers), permit, head_sender, body_sender));
    match head.await {
        Ok(Ok(Head { status, content_type, retry_after })) => {
            Ok(Proxied { call_id, status, content_type, retry_after, body: body_receiver, rate })
        }
        Ok(Err(error)) => Err(with_rate(error)),
        Err(_) => Err(with_rate(AppError::internal("the proxy task ended before the upstream answered"))),
    }
}

/// Chunks buffered between the upstream task and the client: the memory of a slow reader
/// is bounded by this many chunks.
const BODY_CHANNEL_CHUNKS: usize = 16;
/// Most bytes of a non-streamed answer (or one SSE event) kept to read its usage; past it,
/// the bytes are still relayed and the usage is estimated.
const MAX_PARSED_BYTES: usize = 16 * 1024 * 1024;

/// What bahi needs from the client's body.
struct ClientRequest {
    value: Map<String, Value>,
    model: String,
    streaming: bool,
    client_wants_usage: bool,
    max_tokens: Option<u64>,
    body_bytes: usize,
    route: Route,
}

impl ClientRequest {
    fn parse(body: &[u8], route: Route) -> AppResult<ClientRequest> {
        let value: Value = serde_json::from_slice(body).map_err(|error| AppError::Invalid {
            error_type: "invalid_json",
            message: format!("the body is not valid JSON: {error}"),
        })?;
        let Value::Object(value) = value else {
            return Err(AppError::invalid_request("invalid request body: the body must be a JSON object"));
        };
        let model = match value.get("model") {
            Some(Value::String(model)) => model.clone(),
            _ => return Err(AppError::invalid_request("invalid request body: model: a model name is required")),
        };
        bahi_domain::command::check_model_name(&model)?;
        let streaming = match value.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(streaming)) => *streaming,
            Some(_) => return Err(AppError::invalid_request("invalid request body: stream: must be true or false")),
        };
        let client_wants_usage =
            value.get("stream_options").and_then(|options| options.get("include_usage")) == Some(&Value::Bool(true));
        let max_tokens = ["max_tokens", "max_completion_tokens"]
            .iter()
            .filter_map(|field| value.get(*field).filter(|tokens| !tokens.is_null()).map(|tokens| (field, tokens)))
            .map(|(field, tokens)| {
                tokens.as_u64().filter(|tokens| *tokens > 0).ok_or_else(|| {
                    AppError::invalid_request(format!("invalid request body: {field}: must be a positive integer"))
                })
            })
            .try_fold(None, |largest: Option<u64>, tokens| {
                tokens.map(|tokens| Some(largest.map_or(tokens, |l| l.max(tokens))))
            })?;
        Ok(ClientRequest { value, model, streaming, client_wants_usage, max_tokens, body_bytes: body.len(), route })
    }

    /// The hold: the body's bytes as input tokens (never fewer than the tokens they encode)
    /// plus `max_tokens`, or the model's cap, as output tokens, at the model's price.
    fn hold(&self, upstream: &Upstream) -> AppResult<Money> {
        let output_tokens = match (self.route, self.max_tokens) {
            (Route::Embeddings, _) => 0,
            (_, Some(tokens)) if tokens > upstream.max_output_tokens => {
                return Err(AppError::invalid_request(format!(
                    "invalid request body: max_tokens: {tokens} is more than this model's cap of {}",
                    upstream.max_output_tokens
                )));
            }
            (_, Some(tokens)) => tokens,
            (_, None) => upstream.max_output_tokens,
        };
        let input_tokens = u64::try_from(self.body_bytes).map_err(AppError::internal)?;
        let cost = call_cost(&upstream.price, input_tokens, output_tokens).map_err(bahi_domain::DomainError::from)?;
        // A free model still holds one micro-rupee: an authorization always holds something.
        Ok(cost.max(Money::from_micros(1).map_err(bahi_domain::DomainError::from)?))
    }

    /// The body sent upstream: the upstream's model name, and for an OpenAI stream a request
    /// for the usage chunk (stripped again when the client did not ask for it).
    fn forwarded_body(mut self, upstream: &Upstream) -> AppResult<Bytes> {
        if let Some(name) = &upstream.upstream_model {
            self.value.insert("model".into(), Value::String(name.clone()));
        }
        if self.streaming && self.route == Route::ChatCompletions {
            let options = self.value.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(options) = options else {
                return Err(AppError::invalid_request("invalid request body: stream_options: must be an object"));
            };
            options.insert("include_usage".into(), Value::Bool(true));
        }
        if self.route != Route::Embeddings && self.max_tokens.is_none() && self.route == Route::Messages {
            // Anthropic requires max_tokens; the model's cap is what was held for.
            self.value.insert("max_tokens".into(), Value::from(upstream.max_output_tokens));
        }
        serde_json::to_vec(&self.value).map(Bytes::from).map_err(AppError::internal)
    }
}

/// A rough token count of `bytes` of text (four bytes a token), for estimates only.
fn estimate_tokens(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// One proxied call, as its upstream task knows it.
struct Call {
    services: Arc<Services>,
    call_id: CallId,
    model: String,
    route: Route,
    streaming: bool,
    strip_usage_chunk: bool,
    estimated_input_tokens: u64,
    request_id: String,
}

/// Usage as read so far from the upstream's answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// Drives the upstream for one call, relays its answer, and settles the call once.
async fn pump(
    call: Call,
    upstream: Upstream,
    (body, passed_headers): (Bytes, PassedHeaders),
    permit: OwnedSemaphorePermit,
    head: oneshot::Sender<AppResult<Head>>,
    sender: mpsc::Sender<Bytes>,
) {
    let url = format!("{}{}", upstream.base_url, call.route.upstream_path());
    let mut request = call.services.proxy.client.post(&url).header("content-type", "application/json").body(body);
    let client_chose_version = passed_headers.0.iter().any(|(name, _)| *name == "anthropic-version");
    for (name, value) in passed_headers.0 {
        request = request.header(name, value);
    }
    let request = match upstream.provider {
        Provider::OpenAi => request.bearer_auth(upstream.api_key.as_str()),
        Provider::Anthropic if client_chose_version => request.header("x-api-key", upstream.api_key.as_str()),
        Provider::Anthropic => {
            request.header("x-api-key", upstream.api_key.as_str()).header("anthropic-version", ANTHROPIC_VERSION)
        }
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(call_id = %call.call_id, %error, "upstream unreachable");
            let _ = head
                .send(Err(AppError::Upstream(format!("the model's upstream did not answer: {}", describe(&error)))));
            call.settle(Usage { input_tokens: Some(0), output_tokens: Some(0) }, UsageStatus::Failed, false).await;
            drop(permit);
            return;
        }
    };
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let answer_head = Head { status, content_type: header("content-type"), retry_after: header("retry-after") };
    let client_present = head.send(Ok(answer_head)).is_ok();
    let relay = Relay::new(&call, sender, client_present);
    let (usage, relayed_bytes, completed) = relay.run(response, call.services.proxy.limits.drain_timeout).await;
    let status = match (status < 400, completed) {
        (true, true) => UsageStatus::Succeeded,
        (true, false) => UsageStatus::Cancelled,
        (false, _) => UsageStatus::Failed,
    };
    let (usage, estimated) = settled_usage(usage, status, relayed_bytes, call.estimated_input_tokens);
    call.settle(usage, status, estimated).await;
    drop(permit);
}

/// The tokens a call is billed: the upstream's usage when it gave it; none for an upstream's
/// error answer (an error status served no tokens); else an estimate from the bytes relayed
/// (a stream that stopped, or an upstream that reports no usage). The flag says estimated.
fn settled_usage(
    usage: Usage,
    status: UsageStatus,
    relayed_bytes: usize,
    estimated_input_tokens: u64,
) -> (Usage, bool) {
    match (usage.input_tokens, usage.output_tokens) {
        (Some(input), Some(output)) => (Usage { input_tokens: Some(input), output_tokens: Some(output) }, false),
        _ if status == UsageStatus::Failed => (Usage { input_tokens: Some(0), output_tokens: Some(0) }, false),
        (input, output) => {
            let input_tokens = input.unwrap_or(estimated_input_tokens);
            let output_tokens = output.unwrap_or(if relayed_bytes == 0 { 0 } else { estimate_tokens(relayed_bytes) });
            (Usage { input_tokens: Some(input_tokens), output_tokens: Some(output_tokens) }, true)
        }
    }
}

/// The `anthropic-version` bahi asks Anthropic upstreams for when the client named none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An upstream error without the URL (which the client has no business seeing).
fn describe(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection refused or failed"
    } else {
        "request failed"
    }
}

/// Relays the upstream's body to the client while reading the usage out of it.
struct Relay<'call> {
    call: &'call Call,
    sender: mpsc::Sender<Bytes>,
    client_present: bool,
    usage: Usage,
    /// A streamed answer's bytes not yet ending an SSE event; a whole answer otherwise.
    pending: BytesMut,
    relayed_bytes: usize,
    oversized: bool,
}

impl<'call> Relay<'call> {
    fn new(call: &'call Call, sender: mpsc::Sender<Bytes>, client_present: bool) -> Relay<'call> {
        Relay {
            call,
            sender,
            client_present,
            usage: Usage::default(),
            pending: BytesMut::new(),
            relayed_bytes: 0,
            oversized: false,
        }
    }

    /// Reads the upstream to its end (or, once the client left, until the drain time is
    /// up): the usage found, the bytes relayed, and whether the upstream's answer ended.
    async fn run(mut self, response: reqwest::Response, drain_timeout: Duration) -> (Usage, usize, bool) {
        let mut stream = response.bytes_stream();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match drain_deadline {
                None => stream.next().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => return (self.usage, self.relayed_bytes, false),
                },
            };
            match next {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(call_id = %self.call.call_id, %error, "upstream stream broke");
                    return (self.usage, self.relayed_bytes, false);
                }
                Some(Ok(chunk)) => {
                    self.take(chunk).await;
                    if !self.client_present && drain_deadline.is_none() {
                        drain_deadline = Some(tokio::time::Instant::now() + drain_timeout);
                    }
                }
            }
        }
        if !self.call.streaming {
            self.read_whole_answer_usage();
        } else if !self.pending.is_empty() {
            let rest = self.pending.split().freeze();
            self.event(rest).await;
        }
        (self.usage, self.relayed_bytes, true)
    }

    async fn take(&mut self, chunk: Bytes) {
        if !self.call.streaming {
            if self.pending.len() + chunk.len() <= MAX_PARSED_BYTES {
                self.pending.extend_from_slice(&chunk);
            } else {
                self.oversized = true;
            }
            self.send(chunk).await;
            return;
        }
        self.pending.extend_from_slice(&chunk);
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end).freeze();
            self.event(event).await;
        }
        if self.pending.len() > MAX_PARSED_BYTES {
            // One event this large is not one bahi reads; relay it as it is.
            self.oversized = true;
            let bytes = self.pending.split().freeze();
            self.send(bytes).await;
        }
    }

    /// One whole SSE event (with its blank line): read its usage, and relay it unless it is
    /// the usage chunk bahi asked for on the client's behalf.
    async fn event(&mut self, event: Bytes) {
        let provider = self.call.route.provider();
        let data = sse_data(&event).filter(|data| may_carry_usage(provider, &event, data));
        let parsed: Option<Value> = data.and_then(|data| serde_json::from_slice(data).ok());
        if let Some(parsed) = &parsed {
            self.read_event_usage(parsed);
            if self.call.strip_usage_chunk && is_usage_only_chunk(parsed) {
                return;
            }
        }
        self.send(event).await;
    }

    fn read_event_usage(&mut self, event: &Value) {
        match self.call.route.provider() {
            Provider::OpenAi => {
                if let Some(usage) = event.get("usage").filter(|usage| usage.is_object()) {
                    self.usage.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
                    self.usage.output_tokens =
                        Some(usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0));
                }
            }
            Provider::Anthropic => match event.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    if let Some(usage) = event.get("message").and_then(|message| message.get("usage")) {
                        self.read_anthropic_usage(usage);
                    }
                }
                Some("message_delta") => {
                    if let Some(usage) = event.get("usage") {
                        self.read_anthropic_usage(usage);
                    }
                }
                _ => {}
            },
        }
    }

    /// Anthropic's usage: input counts every input token kind; output is a running total.
    fn read_anthropic_usage(&mut self, usage: &Value) {
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        if field("input_tokens").is_some() {
            let parts = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];
            self.usage.input_tokens = Some(parts.iter().filter_map(|name| field(name)).fold(0, u64::saturating_add));
        }
        if let Some(output) = field("output_tokens") {
            self.usage.output_tokens = Some(output);
        }
    }

    fn read_whole_answer_usage(&mut self) {
        if self.oversized {
            return;
        }
        let Ok(answer) = serde_json::from_slice::<Value>(&self.pending) else { return };
        let Some(usage) = answer.get("usage").filter(|usage| usage.is_object()) else { return };
        match self.call.route.provider() {
            Provider::OpenAi => {
                self.usage.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
                self.usage.output_tokens = Some(usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0));
            }
            Provider::Anthropic => {
                let usage = usage.clone();
                self.read_anthropic_usage(&usage);
            }
        }
    }

    async fn send(&mut self, bytes: Bytes) {
        self.relayed_bytes += bytes.len();
        if self.client_present && self.sender.send(bytes).await.is_err() {
            // The client left: keep reading the upstream for its usage, sending nothing.
            self.client_present = false;
        }
    }
}

/// The end (exclusive) of the first whole SSE event in `buffer`: after its blank line.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|window| window == b"\n\n").map(|at| at + 2);
    let crlf = buffer.windows(4).position(|window| window == b"\r\n\r\n").map(|at| at + 4);
    match (lf, crlf) {
        (Some(lf), Some(crlf)) => Some(lf.min(crlf)),
        (found, None) | (None, found) => found,
    }
}

/// The `data:` payload of one SSE event (bahi's upstreams send one data line per event).
fn sse_data(event: &[u8]) -> Option<&[u8]> {
    event.split(|byte| *byte == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let data = line.strip_prefix(b"data:")?;
        let data = data.strip_prefix(b" ").unwrap_or(data);
        (data != b"[DONE]").then_some(data)
    })
}

/// Whether an SSE event could carry usage, by a byte check far cheaper than parsing its
/// data (which cost the node about 3.5 µs an event in BENCHMARKS.md's proxy benchmark;
/// most events are content deltas, parsed for nothing). It may say yes for an event
/// without usage (that event is parsed, as every event was), never no for one with usage:
/// OpenAI's chunks with a `"usage"` key whose value is an object (not `null`), and
/// Anthropic's `message_start` and `message_delta` events, named by the `event:` line or by
/// the data's `"type"`. Data with a `\u` escape is always parsed, since a key may be spelt
/// with escapes and still be `usage` or `type` to a JSON parser.
fn may_carry_usage(provider: Provider, event: &[u8], data: &[u8]) -> bool {
    if memmem::find(data, br"\u").is_some() {
        return true;
    }
    match provider {
        Provider::OpenAi => key_followed_by(data, br#""usage""#, b"{"),
        Provider::Anthropic => {
            sse_event_name(event).is_some_and(|name| name == b"message_start" || name == b"message_delta")
                || key_followed_by(data, br#""type""#, br#""message_start""#)
                || key_followed_by(data, br#""type""#, br#""message_delta""#)
        }
    }
}

/// Whether `data` holds `key`, then optional JSON whitespace, a colon, optional whitespace,
/// and `value`'s bytes.
fn key_followed_by(data: &[u8], key: &[u8], value: &[u8]) -> bool {
    let skip_whitespace = |bytes: &[u8]| -> usize {
        bytes.iter().position(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r')).unwrap_or(bytes.len())
    };
    memmem::find_iter(data, key).any(|at| {
        let rest = &data[at + key.len()..];
        rest[skip_whitespace(rest)..]
            .strip_prefix(b":")
            .is_some_and(|after_colon| after_colon[skip_whitespace(after_colon)..].starts_with(value))
    })
}

/// The name on an SSE event's `event:` line, if it has one.
fn sse_event_name(event: &[u8]) -> Option<&[u8]> {
    event.split(|byte| *byte == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let name = line.strip_prefix(b"event:")?;
        Some(name.strip_prefix(b" ").unwrap_or(name))
    })
}

/// OpenAI's closing usage chunk: no choices, only usage.
fn is_usage_only_chunk(chunk: &Value) -> bool {
    chunk.get("usage").is_some_and(Value::is_object)
        && chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
}

impl Call {
    /// Records the call's usage once; a refusal is logged (the hold then expires by itself).
    async fn settle(&self, usage: Usage, status: UsageStatus, estimated: bool) {
        let input_tokens = usage.input_tokens.unwrap_or(0);
        let output_tokens = usage.output_tokens.unwrap_or(0);
        let source = if estimated { "estimated" } else { "upstream" };
        let command = Command::RecordUsage {
            call_id: self.call_id.clone(),
            model: self.model.clone(),
            input_tokens,
            output_tokens,
            status,
            request_hash: hex::encode(Sha256::digest(
                format!("proxy {} {input_tokens} {output_tokens} {} {source}", self.call_id, status.as_str())
                    .as_bytes(),
            )),
            usage_source: Some(if estimated { UsageSource::Estimated } else { UsageSource::Upstream }),
        };
        let submitted = REQUEST_ID
            .scope(
                self.request_id.clone(),
                self.services.submit(command, Actor::new("proxy", self.route.client_path())),
            )
            .await;
        match submitted {
            Ok(_) => {
                tracing::debug!(call_id = %self.call_id, input_tokens, output_tokens, source, "proxied call settled")
            }
            Err(error) => {
                tracing::error!(call_id = %self.call_id, %error, "a proxied call could not be settled; its hold will expire")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sse_events_split_at_blank_lines_of_either_ending() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
        assert_eq!(sse_data(b"event: x\ndata: {\"a\":1}\n\n"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(sse_data(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn the_upstreams_usage_wins_an_error_answer_is_free_and_anything_else_is_estimated() {
        let reported = Usage { input_tokens: Some(3), output_tokens: Some(8) };
        assert_eq!(settled_usage(reported, UsageStatus::Cancelled, 10, 99), (reported, false));
        let none = Usage::default();
        let free = Usage { input_tokens: Some(0), output_tokens: Some(0) };
        assert_eq!(
            settled_usage(none, UsageStatus::Failed, 500, 99),
            (free, false),
            "an upstream 429's body is no tokens"
        );
        let estimate = Usage { input_tokens: Some(99), output_tokens: Some(3) };
        assert_eq!(settled_usage(none, UsageStatus::Succeeded, 12, 99), (estimate, true));
        let input_only = Usage { input_tokens: Some(5), output_tokens: None };
        let cut = Usage { input_tokens: Some(5), output_tokens: Some(3) };
        assert_eq!(
            settled_usage(input_only, UsageStatus::Cancelled, 12, 99),
            (cut, true),
            "a cut stream bills what it served"
        );
    }

    #[test]
    fn openai_chunks_are_parsed_only_when_usage_may_be_an_object() {
        let may =
            |data: &str| may_carry_usage(Provider::OpenAi, format!("data: {data}\n\n").as_bytes(), data.as_bytes());
        assert!(may(r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12}}"#));
        assert!(may(r#"{"choices":[], "usage": {"prompt_tokens":9}}"#));
        assert!(may("{\"choices\":[],\"usage\" \t:\t {\"prompt_tokens\":9}}"));
        assert!(may(r#"{"usage":null,"x":1,"usage":{"prompt_tokens":9}}"#), "any usage key with an object");
        assert!(!may(r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#));
        assert!(!may(r#"{"choices":[{"delta":{"content":"hi"}}], "usage" : null}"#));
        assert!(!may(r#"{"choices":[{"delta":{"content":"hi"}}]}"#));
        assert!(
            !may(r#"{"choices":[{"delta":{"content":"say \"usage\": {} here"}}]}"#),
            "content's quotes are escaped"
        );
        assert!(may(r#"{"choices":[],"\u0075sage":{"prompt_tokens":9}}"#), "an escaped key is parsed");
        assert!(!may_carry_usage(Provider::OpenAi, b"data: [DONE]\n\n", b""));
    }

    #[test]
    fn anthropic_events_are_parsed_only_when_they_are_message_start_or_delta() {
        let may =
            |event: &str| may_carry_usage(Provider::Anthropic, event.as_bytes(), sse_data(event.as_bytes()).unwrap());
        assert!(may("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{}}}\n\n"));
        assert!(may("event:message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{}}\r\n\r\n"));
        assert!(may("data: {\"type\": \"message_start\", \"message\": {}}\n\n"), "no event line: the data's type");
        assert!(may("data: {\"usage\":{},\"type\" :\t\"message_delta\"}\n\n"));
        assert!(may("event: message_delta\ndata: {\"type\":\"other\"}\n\n"), "the event line alone is enough to parse");
        assert!(!may(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n"
        ));
        assert!(!may("event: ping\ndata: {\"type\": \"ping\"}\n\n"));
        assert!(!may("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert!(!may("data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"));
        assert!(
            !may(
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"type\\\":\\\"message_delta\\\"\"}}\n\n"
            ),
            "a text's quotes are escaped"
        );
    }

    #[test]
    fn only_the_closing_usage_chunk_is_usage_only() {
        let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 1}});
        let content = serde_json::json!({"choices": [{"delta": {}}], "usage": null});
        assert!(is_usage_only_chunk(&usage));
        assert!(!is_usage_only_chunk(&content));
    }
}
