//! The router's compiled front: it takes the router's port, serves the inference requests
//! it can whole (decision, failover, streaming, metrics, access log) and hands everything
//! else to the router's Python app on loopback (`back`). The Python app stays the control
//! plane: it polls regions, keeps their breakers, answers errors and the operational
//! endpoints, and is told of what happens here through `Events`.
//!
//! The front never waits for Python while it holds a lock the Python app may take.

mod back;
mod clients;
pub mod config;
mod errors;
pub mod metrics;
mod relay;
mod request;
pub mod tokens;
pub mod trace;
pub mod usage;

use std::convert::Infallible;
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::HttpBody;
use hyper::server::conn::AddrStream;
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, Request, Response};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::held;
use crate::limits::RateLimits;
use crate::memory::{self, RoutingMemory};
use crate::rtt_corrector::RttCorrector;
use crate::scoring::{choose, LatLon, Network, Profile, RegionLoad, RequestFacts};
use config::{FrontConfig, RegionView};
use metrics::Metrics;
use request::Located;

/// Streams are cut this long before the shutdown grace ends (geo_router/live/drain.py).
const CUT_MARGIN_S: f64 = 1.0;
/// Access-log lines held for the Python app to write; past this they are dropped, counted.
const MAX_HELD_LOG_LINES: usize = 10_000;

pub enum Level {
    Info,
    Warning,
}

/// What the front tells the router's Python app, and asks of it. Called without any of
/// the front's locks held; each call takes Python's lock, so only rare events and what
/// only Python can do (a model's tokenizer, a GeoIP lookup) come here (through `Python`).
pub trait Events: Send + Sync {
    /// A request found `region` failing: its breaker decides.
    fn region_failed(&self, region: &str, detail: &str);
    /// A region whose breaker is open answered a request.
    fn region_answered(&self, region: &str);
    /// The prompt's tokens by the model's tokenizer; None if it cannot count them.
    fn prompt_tokens(&self, model: &str, texts: &[&str]) -> Option<i64>;
    fn locate_ip(&self, ip: IpAddr) -> Option<LatLon>;
    fn log(&self, level: Level, message: &str);
}

/// The Python app as the front's thread reaches it. What the front tells it goes to a
/// thread of its own, through a bounded queue: the thread that serves does not wait for
/// Python's lock to report a failure, and a storm of them is dropped, not queued without
/// end. What it asks (a request's prompt tokens, its client's place) it asks on the
/// serving thread, and waits: a hand-off to another thread per request cost more than the
/// call (router_overhead.py's throughput load: 0.80-1.03x vllm-router's requests/s
/// through tokio's blocking threads, 1.20-1.25x asked on the serving thread).
struct Python {
    events: Arc<dyn Events>,
    told: std::sync::mpsc::SyncSender<Told>,
}

type Told = Box<dyn FnOnce(&dyn Events) + Send>;
/// What the front may have told Python and Python not yet heard.
const MAX_UNHEARD: usize = 1024;

impl Python {
    fn new(events: Arc<dyn Events>) -> Result<Python, String> {
        let (told, unheard) = std::sync::mpsc::sync_channel::<Told>(MAX_UNHEARD);
        let listener = events.clone();
        std::thread::Builder::new()
            .name("meridian-front-events".to_string())
            .spawn(move || {
                // Ends when the front is gone: its sender with it.
                while let Ok(what) = unheard.recv() {
                    what(listener.as_ref());
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Python { events, told })
    }

    fn tell(&self, what: impl FnOnce(&dyn Events) + Send + 'static) {
        // Full: Python is that far behind, and this report is dropped.
        let _ = self.told.try_send(Box::new(what));
    }

    fn region_failed(&self, region: &str, detail: &str) {
        let (region, detail) = (region.to_string(), detail.to_string());
        self.tell(move |events| events.region_failed(&region, &detail));
    }

    fn region_answered(&self, region: &str) {
        let region = region.to_string();
        self.tell(move |events| events.region_answered(&region));
    }

    fn log(&self, level: Level, message: &str) {
        let message = message.to_string();
        self.tell(move |events| events.log(level, &message));
    }

    fn prompt_tokens(&self, model: &str, texts: &[&str]) -> Option<i64> {
        self.events.prompt_tokens(model, texts)
    }

    fn locate_ip(&self, ip: IpAddr) -> Option<LatLon> {
        self.events.locate_ip(ip)
    }
}

pub struct Shared {
    config: FrontConfig,
    network: Network,
    profiles: Vec<Profile>,
    views: Mutex<Vec<RegionView>>,
    in_flight: Vec<AtomicI64>,
    /// When each region was last told it answered (ms since `started`, 0: never).
    answered_reported_ms: Vec<AtomicU64>,
    memory: Arc<Mutex<RoutingMemory>>,
    corrector: Arc<Mutex<RttCorrector>>,
    /// The API keys' limits, shared with the Python app, which charges the same buckets.
    limits: Arc<Mutex<RateLimits>>,
    budget: Mutex<relay::RetryBudget>,
    events: Python,
    /// Per model, in the config's order: its tokenizer, when the front reads it.
    tokenizers: Vec<Option<tokens::ByteLevelBpe>>,
    metrics: Metrics,
    /// Whether the router's access log is on: the Python app says, as its logging changes.
    access_log_on: AtomicBool,
    access_log: Mutex<Vec<String>>,
    spans: Mutex<Vec<trace::SpanRecord>>,
    /// Access-log lines and spans dropped because the Python app fell behind.
    access_log_dropped: AtomicI64,
    spans_dropped: AtomicI64,
    client: clients::Clients,
    /// The Python app's monotonic clock at `started`: the corrector's times are its.
    monotonic_at_start: f64,
    started: Instant,
    cut: watch::Receiver<bool>,
    /// Answers being relayed; the router waits for them to end before it exits.
    relaying: AtomicI64,
}

impl Shared {
    fn monotonic(&self) -> f64 {
        self.monotonic_at_start + self.started.elapsed().as_secs_f64()
    }

    fn region_index(&self, name: &str) -> usize {
        self.config
            .regions
            .iter()
            .position(|r| r.name == name)
            .expect("the scorer ranks configured regions only")
    }
}

/// The running front, owned by the Python app.
pub struct Front {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    stop_accepting: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    cut: Arc<watch::Sender<bool>>,
}

impl Front {
    /// Binds `config.listen` (an error if it cannot) and serves from then on.
    pub fn start(
        config: FrontConfig,
        events: Box<dyn Events>,
        memory: Arc<Mutex<RoutingMemory>>,
        corrector: Arc<Mutex<RttCorrector>>,
        limits: Arc<Mutex<RateLimits>>,
        monotonic_now: f64,
    ) -> Result<Front, String> {
        let metrics = Metrics::new(&config.latency_buckets)?;
        let listener = TcpListener::bind(&config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        // One thread: the whole front on the thread that serves it, with no hand-offs.
        let runtime = if config.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder
                .worker_threads(config.worker_threads)
                .enable_all()
                .build()
        }
        .map_err(|e| e.to_string())?;
        let [earth_radius_km, rtt_intercept_ms, rtt_ms_per_km] = config.network;
        let over_tls = config
            .regions
            .iter()
            .any(|r| r.endpoint.starts_with("https://"));
        let client = clients::Clients::new(over_tls, config.region_ca_file.as_deref())?;
        let (cut_sender, cut) = watch::channel(false);
        let shared = Arc::new(Shared {
            network: Network {
                earth_radius_km,
                rtt_intercept_ms,
                rtt_ms_per_km,
            },
            profiles: config.regions.iter().map(|r| r.profile).collect(),
            views: Mutex::new(vec![RegionView::default(); config.regions.len()]),
            in_flight: config.regions.iter().map(|_| AtomicI64::new(0)).collect(),
            answered_reported_ms: config.regions.iter().map(|_| AtomicU64::new(0)).collect(),
            memory,
            corrector,
            limits,
            budget: Mutex::new(relay::RetryBudget::new(
                config.retry_budget_ratio,
                config.retry_budget_burst,
            )),
            metrics,
            access_log_on: AtomicBool::new(false),
            access_log: Mutex::new(Vec::new()),
            spans: Mutex::new(Vec::new()),
            access_log_dropped: AtomicI64::new(0),
            spans_dropped: AtomicI64::new(0),
            events: Python::new(Arc::from(events))?,
            tokenizers: config.models.iter().map(read_tokenizer).collect(),
            client,
            monotonic_at_start: monotonic_now,
            started: Instant::now(),
            cut,
            relaying: AtomicI64::new(0),
            config,
        });
        let (stop_sender, stop) = tokio::sync::oneshot::channel::<()>();
        let server = {
            let _entered = runtime.enter();
            hyper::Server::from_tcp(listener).map_err(|e| e.to_string())?
        };
        let serving = shared.clone();
        let make = make_service_fn(move |connection: &AddrStream| {
            let shared = serving.clone();
            let peer = connection.remote_addr().ip();
            async move {
                Ok::<_, Infallible>(service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(request, peer, shared).await) }
                }))
            }
        });
        let serving = server
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(60))) // a peer gone without a word is found
            .http1_header_read_timeout(Duration::from_secs_f64(shared.config.header_timeout_s))
            .serve(make)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            });
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("meridian-front".to_string())
            .spawn(move || {
                let _ = runtime.block_on(serving);
                // Every connection has ended, so every relay has: what is left is timers.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| e.to_string())?;
        Ok(Front {
            shared,
            runtime: handle,
            stop_accepting: Mutex::new(Some(stop_sender)),
            cut: Arc::new(cut_sender),
        })
    }

    pub fn set_region(&self, name: &str, view: RegionView) -> Result<(), String> {
        let index = self
            .shared
            .config
            .regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| format!("no region {name:?} in the front's config"))?;
        held(&self.shared.views)[index] = view;
        Ok(())
    }

    /// The models whose prompts the front counts itself.
    pub fn counts_tokens_of(&self) -> Vec<String> {
        let models = self
            .shared
            .config
            .models
            .iter()
            .zip(&self.shared.tokenizers);
        models
            .filter(|(_, t)| t.is_some())
            .map(|(m, _)| m.id.clone())
            .collect()
    }

    pub fn in_flight(&self, name: &str) -> i64 {
        let regions = &self.shared.config.regions;
        regions
            .iter()
            .position(|r| r.name == name)
            .map_or(0, |i| self.shared.in_flight[i].load(Ordering::Relaxed))
    }

    pub fn metric_samples(&self) -> Vec<metrics::Sample> {
        let gauges = self
            .shared
            .config
            .regions
            .iter()
            .zip(&self.shared.in_flight)
            .map(|(region, count)| metrics::Sample {
                name: metrics::IN_FLIGHT.to_string(),
                labels: vec![("region".to_string(), region.name.clone())],
                value: count.load(Ordering::Relaxed) as f64,
            })
            .collect();
        self.shared.metrics.samples(gauges)
    }

    pub fn set_access_log(&self, on: bool) {
        self.shared.access_log_on.store(on, Ordering::Relaxed);
    }

    /// Access-log lines since the last call, and how many were dropped meanwhile.
    pub fn take_access_log(&self) -> (Vec<String>, i64) {
        let lines = std::mem::take(&mut *held(&self.shared.access_log));
        (
            lines,
            self.shared.access_log_dropped.swap(0, Ordering::Relaxed),
        )
    }

    /// Spans since the last call, and how many were dropped meanwhile.
    pub fn take_spans(&self) -> (Vec<trace::SpanRecord>, i64) {
        let spans = std::mem::take(&mut *held(&self.shared.spans));
        (spans, self.shared.spans_dropped.swap(0, Ordering::Relaxed))
    }

    /// Stop taking connections; answers in flight have `grace_s` to end, and streams still
    /// open a second before that are cut with an SSE error event.
    pub fn drain(&self, grace_s: f64) {
        if let Some(stop) = held(&self.stop_accepting).take() {
            let _ = stop.send(());
            let cut = self.cut.clone();
            let wait = Duration::from_secs_f64(f64::max(0.0, grace_s - CUT_MARGIN_S));
            self.runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = cut.send(true);
            });
        }
    }

    /// Whether every answer has ended within `timeout_s`.
    pub fn wait_idle(&self, timeout_s: f64) -> bool {
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
        while self.shared.relaying.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// The model's tokenizer, if the front can count with it itself.
fn read_tokenizer(model: &config::ModelConfig) -> Option<tokens::ByteLevelBpe> {
    let text = std::fs::read_to_string(model.tokenizer_json.as_ref()?).ok()?;
    tokens::ByteLevelBpe::from_json(&text).ok()
}

/// URL path -> the endpoint under /v1/ (inference_path.py's INFERENCE_PATHS).
fn endpoint_of(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat/completions"),
        "/v1/completions" => Some("completions"),
        "/v1/embeddings" => Some("embeddings"),
        _ => None,
    }
}

/// The key an `Authorization: Bearer` header carries (auth.py): Ok(None) when the router
/// is open, Err when the Python app must answer (no valid key).
fn key_of(shared: &Shared, request: &Request<Body>) -> Result<Option<String>, ()> {
    let keys = &shared.config.keys;
    if keys.is_empty() {
        return Ok(None);
    }
    let header = request.headers().get("authorization").ok_or(())?;
    let (scheme, token) = header.to_str().map_err(|_| ())?.split_once(' ').ok_or(())?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(());
    }
    let presented = format!("{:x}", Sha256::digest(token.as_bytes()));
    let mut found = None;
    for key in keys {
        // Every key compared, and each in full: no early exit to time.
        let same = presented
            .bytes()
            .zip(key.sha256.bytes())
            .fold(presented.len() == key.sha256.len(), |same, (a, b)| {
                same & (a == b)
            });
        if same {
            found = Some(key);
        }
    }
    found.map(|key| Some(key.name.clone())).ok_or(())
}

async fn handle(request: Request<Body>, peer: IpAddr, shared: Arc<Shared>) -> Response<Body> {
    let arrived = Instant::now();
    let trace = shared
        .config
        .traced
        .then(|| trace::Trace::begin(request.headers()));
    let endpoint = match (request.method(), endpoint_of(request.uri().path())) {
        (&Method::POST, Some(endpoint)) => endpoint,
        _ => {
            let (parts, body) = request.into_parts();
            return back::to_back(&shared, parts, body, peer).await;
        }
    };
    let key = match key_of(&shared, &request) {
        Ok(key) => key,
        Err(()) => {
            let (parts, body) = request.into_parts();
            return back::to_back(&shared, parts, body, peer).await;
        }
    };
    let limit = shared.config.max_body_bytes;
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.map_or(false, |length| length > limit) {
        let (parts, body) = request.into_parts();
        return back::to_back(&shared, parts, body, peer).await;
    }
    let (parts, body) = request.into_parts();
    let caller = relay::Caller {
        key,
        peer,
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        arrived,
        trace,
    };
    let read = Duration::from_secs_f64(shared.config.header_timeout_s);
    let bytes = match tokio::time::timeout(read, read_capped(body, limit, declared)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(refusal)) => {
            return relay::refuse(&shared, refusal, endpoint, &parts.headers, &caller)
        }
        Err(_) => {
            let message = format!("the request body did not arrive within {read:?}");
            let refusal = errors::error_response(408, &message, None, None, None);
            return relay::refuse(&shared, refusal, endpoint, &parts.headers, &caller);
        }
    };
    match admit(
        &shared,
        endpoint,
        &parts,
        &bytes,
        peer,
        caller.key.as_deref(),
    ) {
        Some(admitted) => relay::forward(&shared, admitted, &parts.headers, caller).await,
        None => back::to_back(&shared, parts, Body::from(bytes), peer).await,
    }
}

/// The request's body, or the answer refusing it: over `limit` bytes (413), or broken off.
async fn read_capped(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
) -> Result<Vec<u8>, Response<Body>> {
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| {
            errors::error_response(400, "the request body could not be read", None, None, None)
        })?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > limit {
            let message = format!("request body exceeds {limit} bytes");
            return Err(errors::error_response(413, &message, None, None, None));
        }
    }
    Ok(bytes)
}

/// A request the front serves, and where it goes.
pub struct Admitted {
    endpoint: &'static str,
    body: hyper::body::Bytes,
    model: String,
    stream: bool,
    completion_cap: i64,
    facts: RequestFacts,
    decision: crate::scoring::RouteDecision,
    /// Region indices, best first: the scorer's ranking, then the reserve.
    ranked: Vec<usize>,
    reason: &'static str,
    request_id: String,
    started: Instant,
    /// The key charged tokens ahead for it, to settle on the answer's usage.
    settle: Option<Settle>,
}

#[derive(Clone)]
pub struct Settle {
    key: String,
    charged: i64,
    /// Usage was asked for on the client's behalf: its event is kept from the client.
    hide_usage: bool,
}

/// Admission (geo_router/live/admission.py) for what the front serves: None sends the
/// request to the Python app, which refuses what is wrong with it in its own words (a
/// request over its key's limits among them: refused here, it was charged nothing).
fn admit(
    shared: &Shared,
    endpoint: &'static str,
    parts: &hyper::http::request::Parts,
    bytes: &[u8],
    peer: IpAddr,
    key: Option<&str>,
) -> Option<Admitted> {
    let started = Instant::now();
    let config = &shared.config;
    let parsed = request::parse(endpoint, bytes)?;
    let model_index = config.models.iter().position(|m| m.id == parsed.model)?;
    let model = &config.models[model_index];
    let session = request::session(
        parts.headers.get("x-session-id").map(|v| v.as_bytes()),
        &parsed.fields,
    )?;
    let client = match request::locate(&parts.headers, peer, &config.locate).ok()? {
        Located::At(at) => at,
        Located::LookUp(ip) => shared.events.locate_ip(ip).unwrap_or(config.locate.default),
    };
    let texts = request::prompt_texts(&parsed.fields);
    let counted = match &shared.tokenizers[model_index] {
        Some(tokenizer) => Some(texts.iter().map(|text| tokenizer.count(text)).sum()),
        None if model.tokenizer => shared.events.prompt_tokens(&model.id, &texts),
        None => None,
    };
    let prompt_tokens = request::message_overhead(&parsed.fields)
        + counted.unwrap_or_else(|| texts.iter().map(|t| t.len() as i64).sum());
    let completion_cap =
        request::completion_cap(endpoint, &parsed.fields, prompt_tokens, model.max_model_len);
    let facts = RequestFacts {
        client,
        prompt_tokens: i64::max(1, prompt_tokens),
        prefix_blocks: memory::prefix_blocks(request::prompt_text(&parsed.fields).as_bytes()),
        tokens_per_block: (memory::BLOCK_BYTES / 4) as i64,
        session: session.map(|id| memory::text_key(&id)),
        cell: Some(memory::cell_key(
            memory::round_half_even(client.lat) as i64,
            memory::round_half_even(client.lon) as i64,
            &parsed.model,
        )),
    };
    let charged = prompt_tokens + completion_cap;
    let now = shared.monotonic();
    let settle = match key {
        Some(key) => charge(shared, key, charged, parsed.stream, &parsed.fields, now)?,
        None => None,
    };
    let (candidates, panic, reserve) = candidates(shared, &parsed.model, client);
    let loads: Vec<RegionLoad> = {
        let corrector = held(&shared.corrector);
        candidates
            .iter()
            .map(|(index, load, elsewhere)| {
                let region = &config.regions[*index];
                RegionLoad {
                    name: region.name.clone(),
                    location: region.location,
                    ready_replicas: load.ready_replicas,
                    running: load.running,
                    waiting: load.waiting,
                    in_flight: shared.in_flight[*index].load(Ordering::Relaxed) as f64 + elsewhere,
                    kv_cache_usage: load.kv_cache_usage,
                    rtt_correction_ms: corrector.correction_for(&region.name, now),
                    cold_start_ms: load.cold_start_ms,
                }
            })
            .collect()
    };
    let profiles: Vec<Profile> = candidates
        .iter()
        .map(|(i, _, _)| shared.profiles[*i])
        .collect();
    let decision = choose(
        &loads,
        &facts,
        &mut held(&shared.memory),
        &profiles,
        &config.scoring,
        &shared.network,
    );
    let decision = match decision {
        Some(decision) => decision,
        None => {
            // Not sent anywhere: the Python app answers that no region serves it.
            if let Some(key) = key {
                if let Some(limits) = held(&shared.limits).get_mut(key) {
                    limits.refund(charged as f64, now);
                }
            }
            return None;
        }
    };
    let mut ranked: Vec<usize> = decision
        .ranked
        .iter()
        .map(|n| shared.region_index(n))
        .collect();
    let reserve: Vec<usize> = reserve
        .into_iter()
        .filter(|i| !ranked.contains(i))
        .collect();
    ranked.extend(reserve);
    let body = match &settle {
        Some(settle) if settle.hide_usage => usage::body_asking_for_usage(&parsed.fields),
        _ => hyper::body::Bytes::copy_from_slice(bytes),
    };
    Some(Admitted {
        endpoint,
        body,
        model: parsed.model,
        stream: parsed.stream,
        completion_cap,
        facts,
        reason: if panic { "panic" } else { decision.reason },
        decision,
        ranked,
        request_id: request::request_id(&parts.headers),
        started,
        settle,
    })
}

/// Charge `key` for a request that may use `charged` tokens: None when its limits refuse
/// it now, else how it is settled, if it is.
fn charge(
    shared: &Shared,
    key: &str,
    charged: i64,
    stream: bool,
    fields: &serde_json::Map<String, serde_json::Value>,
    now: f64,
) -> Option<Option<Settle>> {
    let mut limits = held(&shared.limits);
    if let Some(key_limits) = limits.get_mut(key) {
        if key_limits.admit(charged as f64, now) > 0.0 {
            return None;
        }
    }
    if !limits.limits_tokens(key) {
        return Some(None);
    }
    // A stream is settled on its usage too: asked for it, which the client that did not
    // ask never sees.
    Some(Some(Settle {
        key: key.to_string(),
        charged,
        hide_usage: stream && !usage::asks_for_usage(fields),
    }))
}

/// Regions to route `model` to with their loads (regions.py's `servable`), whether that
/// is panic routing, and the reserve: regions an open breaker keeps out that last had a
/// ready replica of it, nearest first (`reserve`).
fn candidates(
    shared: &Shared,
    model: &str,
    client: LatLon,
) -> (Vec<(usize, config::ModelLoad, f64)>, bool, Vec<usize>) {
    let views = held(&shared.views);
    let serving = |view: &RegionView| view.models.get(model).copied();
    let healthy: Vec<_> = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.healthy)
        .filter_map(|(i, v)| serving(v).map(|load| (i, load, v.in_flight_elsewhere)))
        .collect();
    let (chosen, panic) = if healthy.is_empty() {
        let startable = views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                serving(v)
                    .filter(|load| load.ready_replicas > 0.0 || v.may_start)
                    .map(|load| (i, load, v.in_flight_elsewhere))
            })
            .collect();
        (startable, true)
    } else {
        (healthy, false)
    };
    let mut reserve: Vec<usize> = views
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            !chosen.iter().any(|(c, _, _)| c == i)
                && v.breaker_open
                && serving(v).map_or(false, |load| load.ready_replicas > 0.0)
        })
        .map(|(i, _)| i)
        .collect();
    let regions = &shared.config.regions;
    let distance = |i: &usize| shared.network.haversine_km(client, regions[*i].location);
    reserve.sort_by(|a, b| {
        distance(a)
            .total_cmp(&distance(b))
            .then_with(|| regions[*a].name.cmp(&regions[*b].name))
    });
    (chosen, panic, reserve)
}
