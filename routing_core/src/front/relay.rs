//! Forward an admitted request to the best region and relay its answer (the front's
//! geo_router/live/proxy.py): failover before the first byte within the fleet's retry
//! budget, a region blamed only when another answered the same request, the answer
//! streamed chunk by chunk, and a stream that breaks ended with an SSE error event.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::{Bytes, HttpBody};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::response::Parts;
use hyper::{Body, HeaderMap, Request, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::errors::{error_response, relayed_error, sse_error_event};
use super::metrics::{DECISIONS, DURATION, FAILOVERS_REFUSED, REQUESTS, TTFB, UPSTREAM_ERRORS};
use super::trace::Trace;
use super::usage::{Tail, UsageEventFilter};
use super::{held, Admitted, Level, Settle, Shared, MAX_HELD_LOG_LINES};

/// Request headers passed to the region (proxy.py's FORWARDED_REQUEST_HEADERS, the
/// request id aside: the front sets it).
const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["content-type", "accept", "traceparent", "tracestate"];
const FORWARDED_RESPONSE_HEADERS: [&str; 2] = ["content-type", "cache-control"];
const REGION_HEADER: &str = "x-meridian-region";
const REQUEST_ID_HEADER: &str = "x-request-id";
/// A region's error answer read to re-shape it; past this it is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// nginx's status for a request whose client closed the connection first.
const CLIENT_CLOSED: &str = "499";
const SSE_DONE: &[u8] = b"data: [DONE]\n\n";
/// A region whose breaker is closed hears that it answered at most this often.
const ANSWERED_REPORT_INTERVAL_MS: u64 = 1000;

/// Failovers across all requests (retry_budget.py).
pub struct RetryBudget {
    ratio: f64,
    burst: f64,
    tokens: f64,
}

impl RetryBudget {
    pub fn new(ratio: f64, burst: f64) -> Self {
        RetryBudget {
            ratio,
            burst,
            tokens: burst,
        }
    }
    fn deposit(&mut self) {
        self.tokens = f64::min(self.burst, self.tokens + self.ratio);
    }
    fn withdraw(&mut self) -> bool {
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// An attempt that failed before any byte reached the client.
struct RegionFailed {
    kind: &'static str,
    detail: String,
    /// The region could not be reached at all, whatever was asked.
    blames_region: bool,
}

/// A region's in-flight count, held for as long as this lives.
struct InFlight {
    shared: Arc<Shared>,
    index: usize,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, index: usize) -> Self {
        shared.in_flight[index].fetch_add(1, Ordering::Relaxed);
        InFlight {
            shared: shared.clone(),
            index,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

struct Attempt {
    index: usize,
    parts: Parts,
    body: Body,
    first_chunk: Bytes,
    in_flight: InFlight,
}

/// While a request waits for a region's first byte, a client that hangs up drops the
/// request's future (hyper does, and the region's request with it): this counts it.
struct Waiting<'a> {
    shared: &'a Shared,
    admitted: &'a Admitted,
    caller: &'a Caller,
    region: Option<usize>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.region {
            let name = &self.shared.config.regions[index].name;
            count_request(self.shared, name, &self.admitted.model, CLIENT_CLOSED);
            record_span(
                self.shared,
                self.caller,
                self.admitted,
                Some(name),
                CLIENT_CLOSED,
            );
            let message = format!(
                "client hung up before the first byte from {name}; its request there is closed"
            );
            self.shared.events.log(Level::Info, &message);
        }
    }
}

fn count_request(shared: &Shared, region: &str, model: &str, outcome: &str) {
    shared.metrics.count(
        REQUESTS,
        &["region", "model", "status"],
        &[region, model, outcome],
    );
}

fn is_retryable_status(status: u16) -> bool {
    // proxy.py's: a redirect, a missing app (404), 408 and 5xx are the region's.
    (300..400).contains(&status) || status == 404 || status == 408 || status >= 500
}

/// What an access-log line says of a request beyond its answer.
pub struct Caller {
    pub key: Option<String>,
    pub peer: IpAddr,
    pub method: String,
    pub path: String,
    pub arrived: Instant,
    /// The request's span, when the router is traced.
    pub trace: Option<Trace>,
}

pub async fn forward(
    shared: &Arc<Shared>,
    admitted: Admitted,
    headers: &HeaderMap,
    caller: Caller,
) -> Response<Body> {
    held(&shared.budget).deposit();
    let mut suspects: Vec<(usize, RegionFailed)> = Vec::new();
    let mut tried: Vec<&str> = Vec::new();
    let mut budget_spent = false;
    let mut waiting = Waiting {
        shared,
        admitted: &admitted,
        caller: &caller,
        region: None,
    };
    for (position, &index) in admitted.ranked.iter().enumerate() {
        if position > 0 && !held(&shared.budget).withdraw() {
            shared.metrics.count(FAILOVERS_REFUSED, &[], &[]);
            budget_spent = true;
            break;
        }
        let name = shared.config.regions[index].name.as_str();
        tried.push(name);
        waiting.region = Some(index);
        let traceparent = caller.trace.as_ref().map(Trace::traceparent);
        let attempt = match attempt(shared, index, &admitted, headers, traceparent).await {
            Ok(attempt) => attempt,
            Err(failure) => {
                waiting.region = None;
                shared
                    .metrics
                    .count(UPSTREAM_ERRORS, &["region", "kind"], &[name, failure.kind]);
                let message = format!(
                    "attempt on {name} failed before first byte: {}",
                    failure.detail
                );
                shared.events.log(Level::Warning, &message);
                if failure.blames_region {
                    shared.events.region_failed(name, &failure.detail);
                } else {
                    suspects.push((index, failure));
                }
                continue;
            }
        };
        waiting.region = None;
        for (suspect, failure) in &suspects {
            // This region answered: theirs was their failure.
            shared
                .events
                .region_failed(&shared.config.regions[*suspect].name, &failure.detail);
        }
        let ttfb_s = admitted.started.elapsed().as_secs_f64();
        answered(shared, index);
        let reason = if position == 0 {
            admitted.reason
        } else {
            "failover"
        };
        shared
            .metrics
            .count(DECISIONS, &["region", "reason"], &[name, reason]);
        shared.metrics.observe(TTFB, name, &admitted.model, ttfb_s);
        learn(shared, &admitted, index, ttfb_s);
        drop(waiting);
        return respond(shared, &admitted, attempt, caller).await;
    }
    drop(waiting);
    let answer = failed(shared, suspects, &tried, budget_spent);
    record_span(shared, &caller, &admitted, None, answer.status().as_str());
    enveloped(shared, answer, &admitted, None, &caller)
}

fn failed(
    shared: &Shared,
    suspects: Vec<(usize, RegionFailed)>,
    tried: &[&str],
    budget_spent: bool,
) -> Response<Body> {
    let tried_list = tried.join(", ");
    if suspects.len() >= 2 && !budget_spent {
        // Failed in every region it was tried in: the request, not the regions.
        let message = format!(
            "a request failed in every region it was tried in ({tried_list}); no breaker opened"
        );
        shared.events.log(Level::Warning, &message);
        let answer = format!("the request failed in every region it was tried in ({tried_list})");
        return error_response(502, &answer, None, Some("upstream_error"), None);
    }
    for (suspect, failure) in &suspects {
        // Nothing to compare with: the region is blamed.
        shared
            .events
            .region_failed(&shared.config.regions[*suspect].name, &failure.detail);
    }
    let detail = if budget_spent {
        "the failover budget is spent".to_string()
    } else if tried.is_empty() {
        "tried none".to_string()
    } else {
        format!("tried {tried_list}")
    };
    let message = format!("no region could serve the request ({detail})");
    error_response(503, &message, None, Some("no_healthy_region"), Some(1))
}

/// How long `index` may take to send the first byte (proxy.py's first_byte_deadline_s).
fn first_byte_deadline_s(shared: &Shared, admitted: &Admitted, index: usize) -> f64 {
    let config = &shared.config;
    let cold_start_ms = held(&shared.views)[index]
        .models
        .get(&admitted.model)
        .map_or(0.0, |load| load.cold_start_ms);
    let mut deadline = config.first_byte_timeout_s + cold_start_ms / 1000.0;
    if !admitted.stream {
        // The whole answer comes before its first byte.
        deadline += admitted.completion_cap as f64 * config.output_token_timeout_s;
    }
    deadline
}

fn upstream_detail(error: &hyper::Error) -> String {
    if error.is_connect() {
        "could not connect".to_string()
    } else if error.is_timeout() {
        "timed out".to_string()
    } else {
        "the connection failed".to_string()
    }
}

async fn attempt(
    shared: &Arc<Shared>,
    index: usize,
    admitted: &Admitted,
    headers: &HeaderMap,
    traceparent: Option<String>,
) -> Result<Attempt, RegionFailed> {
    let config = &shared.config;
    let region = &config.regions[index];
    let route = config
        .models
        .iter()
        .find(|m| m.id == admitted.model)
        .map_or("", |m| m.route.as_str());
    let mut request = Request::post(format!(
        "{}{}/v1/{}",
        region.endpoint, route, admitted.endpoint
    ));
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = headers.get(name) {
            if !(name == "traceparent" && traceparent.is_some()) {
                request = request.header(name, value);
            }
        }
    }
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent); // this request's span is the parent
    }
    request = request
        .header(REQUEST_ID_HEADER, admitted.request_id.as_str())
        .header("accept-encoding", "identity"); // relayed as it comes: it must come plain
    if let Some(token) = &region.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Body::from(admitted.body.clone()))
        .map_err(|_| RegionFailed {
            kind: "connect",
            detail: "the region's address is malformed".to_string(),
            blames_region: true,
        })?;
    let in_flight = InFlight::enter(shared, index);
    let deadline_s = first_byte_deadline_s(shared, admitted, index);
    let first_byte = async {
        let answer = shared
            .client
            .request(request)
            .await
            .map_err(|error| RegionFailed {
                kind: "connect",
                detail: upstream_detail(&error),
                blames_region: true,
            })?;
        let status = answer.status().as_u16();
        if is_retryable_status(status) {
            // A 5xx may be this request's doing; a missing app or a redirect is the region's.
            return Err(RegionFailed {
                kind: "status",
                detail: format!("HTTP {status}"),
                blames_region: status < 500 && status != 408,
            });
        }
        let (parts, mut body) = answer.into_parts();
        let first_chunk = loop {
            match body.data().await {
                Some(Ok(chunk)) if !chunk.is_empty() => break chunk,
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    return Err(RegionFailed {
                        kind: "connect",
                        detail: upstream_detail(&error),
                        blames_region: true,
                    })
                }
                None => break Bytes::new(),
            }
        };
        Ok((parts, body, first_chunk))
    };
    match tokio::time::timeout(Duration::from_secs_f64(deadline_s), first_byte).await {
        Ok(Ok((parts, body, first_chunk))) => Ok(Attempt {
            index,
            parts,
            body,
            first_chunk,
            in_flight,
        }),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(RegionFailed {
            kind: "first_byte_timeout",
            detail: format!("no first byte within {deadline_s:.1} s"),
            blames_region: false,
        }),
    }
}

/// A region answered: its breaker hears so when open, and otherwise now and then (a slow
/// status poll is no evidence against a region that is answering).
fn answered(shared: &Shared, index: usize) {
    let breaker_open = held(&shared.views)[index].breaker_open;
    let now_ms = shared.started.elapsed().as_millis() as u64 + 1;
    let last = &shared.answered_reported_ms[index];
    let reported = last.load(Ordering::Relaxed);
    if breaker_open || reported == 0 || now_ms - reported >= ANSWERED_REPORT_INTERVAL_MS {
        last.store(now_ms, Ordering::Relaxed);
        shared
            .events
            .region_answered(&shared.config.regions[index].name);
    }
}

/// What the first byte of `index`'s answer teaches the scorer (admission.py's `learn`).
fn learn(shared: &Shared, admitted: &Admitted, index: usize, ttfb_s: f64) {
    let name = &shared.config.regions[index].name;
    crate::scoring::remember(
        &mut held(&shared.memory),
        name,
        &admitted.facts,
        &admitted.decision,
    );
    if !admitted.stream {
        return; // only a stream's first byte is its first token
    }
    let predicted = admitted
        .decision
        .estimates
        .iter()
        .find(|e| &e.region == name);
    if let Some(predicted) = predicted {
        let now = shared.monotonic();
        held(&shared.corrector).observe(name, predicted.ttft_ms(), ttfb_s * 1000.0, now);
    }
}

async fn respond(
    shared: &Arc<Shared>,
    admitted: &Admitted,
    attempt: Attempt,
    caller: Caller,
) -> Response<Body> {
    let Attempt {
        index,
        parts,
        body: mut upstream,
        first_chunk,
        in_flight,
    } = attempt;
    let name = shared.config.regions[index].name.clone();
    let status = parts.status.as_u16();
    if status >= 400 {
        // The client's error, said by the engine: re-shaped, never relayed raw.
        let mut body = first_chunk.to_vec();
        let idle = Duration::from_secs_f64(shared.config.upstream_timeout_s);
        while body.len() < MAX_ERROR_BODY {
            match tokio::time::timeout(idle, upstream.data()).await {
                Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        drop(upstream);
        drop(in_flight);
        count_request(shared, &name, &admitted.model, &status.to_string());
        record_span(shared, &caller, admitted, Some(&name), &status.to_string());
        shared.metrics.observe(
            DURATION,
            &name,
            &admitted.model,
            admitted.started.elapsed().as_secs_f64(),
        );
        return enveloped(
            shared,
            relayed_error(status, &body),
            admitted,
            None,
            &caller,
        );
    }
    let mut response = Response::builder().status(parts.status);
    for name in FORWARDED_RESPONSE_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            response = response.header(name, value);
        }
    }
    let (sender, chunks) = mpsc::channel(1);
    let body = Body::wrap_stream(Chunks(chunks));
    let response = response
        .body(body)
        .expect("a relayed response is well formed");
    let response = enveloped_headers(response, &admitted.request_id, Some(&name));
    shared.relaying.fetch_add(1, Ordering::Relaxed);
    let relay = Relay {
        shared: shared.clone(),
        region: name,
        model: admitted.model.clone(),
        stream: admitted.stream,
        status,
        started: admitted.started,
        request_id: admitted.request_id.clone(),
        endpoint: admitted.endpoint,
        reason: admitted.reason,
        caller,
        in_flight,
    };
    let usage = admitted.settle.as_ref().map(|settle| Usage {
        settle: settle.clone(),
        tail: Tail::default(),
        filter: (settle.hide_usage && admitted.stream).then(UsageEventFilter::default),
    });
    tokio::spawn(relay.run(upstream, first_chunk, sender, usage));
    response
}

/// The chunks of an answer as its client's connection reads them. When the connection
/// closes, hyper drops this, and the relay hears it (`Sender::closed`).
struct Chunks(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// What an answer whose key is charged tokens is read for: its usage, and the usage event
/// kept from a client that did not ask for it.
struct Usage {
    settle: Settle,
    tail: Tail,
    filter: Option<UsageEventFilter>,
}

impl Usage {
    /// What of `chunk` the client gets.
    fn read(&mut self, chunk: Bytes) -> Bytes {
        self.tail.keep(&chunk);
        match self.filter.as_mut() {
            Some(filter) => filter.feed(&chunk),
            None => chunk,
        }
    }
}

/// Send the client what it gets of `chunk`: whether it is still there.
async fn pass(client: &mpsc::Sender<Bytes>, usage: &mut Option<Usage>, chunk: Bytes) -> bool {
    let chunk = match usage.as_mut() {
        Some(usage) => usage.read(chunk),
        None => chunk,
    };
    chunk.is_empty() || client.send(chunk).await.is_ok()
}

/// One answer being relayed, and what its end is counted with.
struct Relay {
    shared: Arc<Shared>,
    region: String,
    model: String,
    stream: bool,
    status: u16,
    started: Instant,
    request_id: String,
    endpoint: &'static str,
    reason: &'static str,
    caller: Caller,
    in_flight: InFlight,
}

impl Relay {
    async fn run(
        self,
        mut upstream: Body,
        first_chunk: Bytes,
        client: mpsc::Sender<Bytes>,
        mut usage: Option<Usage>,
    ) {
        let relayed = self.relay(&mut upstream, first_chunk, &client, &mut usage);
        let (outcome, relayed_whole) = relayed.await;
        drop(upstream); // an answer not read to its end closes the region's connection
        drop(client);
        let Relay {
            shared,
            region,
            model,
            status,
            started,
            request_id,
            endpoint,
            reason,
            caller,
            in_flight,
            ..
        } = self;
        drop(in_flight);
        if let Some(Usage { settle, tail, .. }) = usage.filter(|_| relayed_whole) {
            if let Some(used) = tail.used_tokens() {
                if let Some(limits) = held(&shared.limits).get_mut(&settle.key) {
                    limits.settle(settle.charged as f64, used as f64, shared.monotonic());
                }
            }
        }
        let mut outcome = outcome;
        if !relayed_whole && outcome == status.to_string() {
            outcome = CLIENT_CLOSED.to_string();
            let message = format!("client hung up during the answer from {region}");
            shared.events.log(Level::Info, &message);
        }
        count_request(&shared, &region, &model, &outcome);
        let duration_s = started.elapsed().as_secs_f64();
        shared
            .metrics
            .observe(DURATION, &region, &model, duration_s);
        access_log(&shared, &request_id, status, &region, Some(&model), &caller);
        let region = Some(region.as_str());
        record_trace(
            &shared,
            &caller,
            endpoint,
            &request_id,
            &model,
            reason,
            region,
            &outcome,
        );
        shared.relaying.fetch_sub(1, Ordering::Relaxed);
    }

    /// Relay the answer's chunks until it ends, breaks, is cut or its client hangs up:
    /// what it ended with, and whether the client got all of it.
    async fn relay(
        &self,
        upstream: &mut Body,
        first_chunk: Bytes,
        client: &mpsc::Sender<Bytes>,
        usage: &mut Option<Usage>,
    ) -> (String, bool) {
        let shared = &self.shared;
        let mut outcome = self.status.to_string();
        // A client may hang up once it has a stream's last event, before the body's end.
        let mut relayed_whole = first_chunk.ends_with(SSE_DONE);
        let mut client_gone = !pass(client, usage, first_chunk).await;
        // A client that hangs up while the region is silent is heard at once: the region's
        // request is then closed, and its engine drops it.
        let hung_up = client.closed();
        tokio::pin!(hung_up);
        let mut cut = shared.cut.clone();
        let cut_now = async move {
            while !*cut.borrow() {
                if cut.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::pin!(cut_now);
        // The longest silence between two chunks: one timer, moved on only when it fires,
        // so that a chunk costs a clock read rather than a timer of its own.
        let idle = Duration::from_secs_f64(shared.config.upstream_timeout_s);
        let mut last_chunk = Instant::now();
        let silence = tokio::time::sleep(idle);
        tokio::pin!(silence);
        while !client_gone {
            tokio::select! {
                biased;
                _ = &mut cut_now => {
                    outcome = self.cut_short(client).await;
                    break;
                }
                _ = &mut hung_up => break,
                next = upstream.data() => match next {
                    Some(Ok(chunk)) => {
                        last_chunk = Instant::now();
                        let last = chunk.ends_with(SSE_DONE);
                        client_gone = !pass(client, usage, chunk).await;
                        relayed_whole = last && !client_gone;
                    }
                    None => {
                        let rest = usage.as_mut().and_then(|u| u.filter.as_mut()).map(|f| f.rest());
                        relayed_whole = match rest {
                            Some(rest) if !rest.is_empty() => client.send(rest).await.is_ok(),
                            _ => true,
                        };
                        break;
                    }
                    Some(Err(_)) => {
                        outcome = self.broken(client).await;
                        break;
                    }
                },
                _ = &mut silence => {
                    if last_chunk.elapsed() >= idle {
                        outcome = self.broken(client).await;
                        break;
                    }
                    silence.as_mut().reset((last_chunk + idle).into());
                }
            }
        }
        (outcome, relayed_whole)
    }

    async fn broken(&self, client: &mpsc::Sender<Bytes>) -> String {
        let shared = &self.shared;
        shared.metrics.count(
            UPSTREAM_ERRORS,
            &["region", "kind"],
            &[&self.region, "stream_broken"],
        );
        let message = format!("stream from {} broke after first byte", self.region);
        shared.events.log(Level::Warning, &message);
        if self.stream {
            let message = format!("the stream from region {} broke", self.region);
            let event = sse_error_event(502, &message, "stream_broken");
            let _ = client.send(Bytes::from(event)).await;
        }
        "stream_broken".to_string()
    }

    async fn cut_short(&self, client: &mpsc::Sender<Bytes>) -> String {
        if self.stream {
            let again = "the router is restarting; send the request again";
            let _ = client
                .send(Bytes::from(sse_error_event(503, again, "router_shutdown")))
                .await;
        }
        "router_shutdown".to_string()
    }
}

/// The router's envelope (middleware.py): the request id, the region header, and an
/// access-log line for an answer that is not relayed on.
fn enveloped(
    shared: &Shared,
    response: Response<Body>,
    admitted: &Admitted,
    region: Option<&str>,
    caller: &Caller,
) -> Response<Body> {
    let status = response.status().as_u16();
    access_log(
        shared,
        &admitted.request_id,
        status,
        region.unwrap_or("none"),
        Some(&admitted.model),
        caller,
    );
    enveloped_headers(response, &admitted.request_id, region)
}

fn enveloped_headers(
    mut response: Response<Body>,
    request_id: &str,
    region: Option<&str>,
) -> Response<Body> {
    let headers = response.headers_mut();
    let value =
        |text: &str| HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("none"));
    headers.insert(
        HeaderName::from_static(REGION_HEADER),
        value(region.unwrap_or("none")),
    );
    headers.insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        value(request_id),
    );
    response
}

fn access_log(
    shared: &Shared,
    request_id: &str,
    status: u16,
    region: &str,
    model: Option<&str>,
    caller: &Caller,
) {
    if !shared.access_log_on.load(Ordering::Relaxed) {
        return;
    }
    let duration_ms = (caller.arrived.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
    let line = json!({
        "request_id": request_id,
        "method": caller.method,
        "path": caller.path,
        "status": status,
        "region": region,
        "model": model,
        "key": caller.key,
        "client": caller.peer.to_string(),
        "duration_ms": duration_ms,
    });
    let mut text = Vec::new();
    let mut writer = serde_json::Serializer::with_formatter(&mut text, PythonJson);
    serde::Serialize::serialize(&line, &mut writer).expect("a JSON value serializes");
    let mut lines = held(&shared.access_log);
    if lines.len() < MAX_HELD_LOG_LINES {
        lines.push(String::from_utf8(text).expect("JSON is UTF-8"));
    } else {
        shared.access_log_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// JSON as Python's `json.dumps` writes it by default (", " and ": "), so the router's
/// access-log lines read alike whichever path wrote them.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The request's span, recorded for the Python app to export (app.py's `end_span`).
fn record_span(
    shared: &Shared,
    caller: &Caller,
    admitted: &Admitted,
    region: Option<&str>,
    outcome: &str,
) {
    record_trace(
        shared,
        caller,
        admitted.endpoint,
        &admitted.request_id,
        &admitted.model,
        admitted.reason,
        region,
        outcome,
    )
}

#[allow(clippy::too_many_arguments)]
fn record_trace(
    shared: &Shared,
    caller: &Caller,
    endpoint: &str,
    request_id: &str,
    model: &str,
    reason: &str,
    region: Option<&str>,
    outcome: &str,
) {
    let trace = match &caller.trace {
        Some(trace) => trace,
        None => return,
    };
    let mut attributes = vec![
        ("http.request.method", caller.method.clone()),
        ("url.path", caller.path.clone()),
        ("meridian.request_id", request_id.to_string()),
    ];
    // What is known of it: a request refused before admission has no model or reason.
    for (name, value) in [("meridian.model", model), ("meridian.reason", reason)] {
        if !value.is_empty() {
            attributes.push((name, value.to_string()));
        }
    }
    if let Some(region) = region {
        attributes.push(("meridian.region", region.to_string()));
    }
    let span = trace.finish(format!("POST /v1/{endpoint}"), attributes, outcome);
    let mut spans = held(&shared.spans);
    if spans.len() < MAX_HELD_LOG_LINES {
        spans.push(span);
    } else {
        shared.spans_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// An answer refusing a request before its admission (its body too large, too slow or
/// broken off), in the router's envelope, logged and traced.
pub fn refuse(
    shared: &Shared,
    refusal: Response<Body>,
    endpoint: &str,
    headers: &HeaderMap,
    caller: &Caller,
) -> Response<Body> {
    let request_id = super::request::request_id(headers);
    let status = refusal.status();
    access_log(shared, &request_id, status.as_u16(), "none", None, caller);
    record_trace(
        shared,
        caller,
        endpoint,
        &request_id,
        "",
        "",
        None,
        status.as_str(),
    );
    enveloped_headers(refusal, &request_id, None)
}
