//! A probe, not Meridian's data plane: how fast can a compiled relay go when it makes
//! Meridian's per-request decision with the real scorer (routing_core, linked directly)?
//!
//! Per request it reads and parses the body, refuses what the router would (OpenAI-shaped
//! 400/404), locates the client (`X-Client-Location` or the default), counts the prompt
//! by its UTF-8 bytes (the router's count without a tokenizer), hashes its prefix blocks,
//! asks `routing_core::scoring::choose` for the ranking, relays to the first region that
//! answers (the next one when a connection fails) and streams the answer back through a
//! task that keeps the region's in-flight count until the stream ends. It has no API
//! keys, limits, usage settlement, metrics, spans, access log or region polling: the
//! figures are an upper bound for a data plane built this way.
//!
//!     relay_probe CONFIG.json   (written by benchmarks/dataplane_probe.py from the spec)

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::HttpBody;
use hyper::client::HttpConnector;
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Client, Method, Request, Response, StatusCode, Uri};
use routing_core::memory::{self, RoutingMemory};
use routing_core::scoring::{
    choose, remember, LatLon, Network, Profile, RegionLoad, RequestFacts, Scoring,
};
use serde::Deserialize;
use serde_json::Value;

const BODY_LIMIT: usize = 1 << 20;
const TOKENS_PER_MESSAGE: i64 = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    port: u16,
    models: Vec<String>,
    default_location: LatLon,
    network: [f64; 3],
    scoring: Scoring,
    regions: Vec<RegionConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionConfig {
    name: String,
    location: LatLon,
    upstream: String,
    profile: Profile,
}

struct State {
    config: Config,
    profiles: Vec<Profile>,
    network: Network,
    in_flight: Vec<Arc<AtomicI64>>,
    memory: Mutex<RoutingMemory>,
    client: Client<HttpConnector, Body>,
}

fn openai_error(status: StatusCode, message: &str, param: Option<&str>) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}});
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

fn prompt_bytes(fields: &Value) -> i64 {
    let text_bytes = |content: &Value| -> i64 {
        match content {
            Value::String(text) => text.len() as i64,
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text")?.as_str())
                .map(|t| t.len() as i64)
                .sum(),
            _ => 0,
        }
    };
    match fields.get("messages").and_then(Value::as_array) {
        Some(messages) => messages
            .iter()
            .map(|m| TOKENS_PER_MESSAGE + m.get("content").map_or(0, text_bytes))
            .sum(),
        None => fields.get("prompt").map_or(0, text_bytes),
    }
}

fn client_location(request: &Request<Body>, default: LatLon) -> LatLon {
    let header = request
        .headers()
        .get("x-client-location")
        .and_then(|v| v.to_str().ok());
    let parsed = header.and_then(|text| {
        let (lat, lon) = text.split_once(',')?;
        Some(LatLon {
            lat: lat.trim().parse().ok()?,
            lon: lon.trim().parse().ok()?,
        })
    });
    match parsed {
        Some(at) if (-90.0..=90.0).contains(&at.lat) && (-180.0..=180.0).contains(&at.lon) => at,
        _ => default,
    }
}

async fn handle(request: Request<Body>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    if request.method() != Method::POST
        || !(path == "/v1/chat/completions" || path == "/v1/completions")
    {
        return Ok(openai_error(StatusCode::NOT_FOUND, "no such route", None));
    }
    let config = &state.config;
    let client = client_location(&request, config.default_location);
    let session = request
        .headers()
        .get("x-session-id")
        .map(|v| memory::text_key(v.as_bytes()));
    let bytes = match hyper::body::to_bytes(request.into_body()).await {
        Ok(bytes) if bytes.len() <= BODY_LIMIT => bytes,
        Ok(_) => {
            return Ok(openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                None,
            ))
        }
        Err(_) => {
            return Ok(openai_error(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
                None,
            ))
        }
    };
    let fields: Value = match serde_json::from_slice(&bytes) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return Ok(openai_error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object",
                None,
            ))
        }
    };
    let Some(model) = fields.get("model").and_then(Value::as_str) else {
        return Ok(openai_error(
            StatusCode::BAD_REQUEST,
            "'model' must be a string",
            Some("model"),
        ));
    };
    if !config.models.iter().any(|m| m == model) {
        return Ok(openai_error(
            StatusCode::NOT_FOUND,
            "no such model",
            Some("model"),
        ));
    }
    let prompt_text = match fields.get("messages") {
        Some(messages @ Value::Array(_)) => messages.to_string(),
        Some(_) => {
            return Ok(openai_error(
                StatusCode::BAD_REQUEST,
                "'messages' must be an array",
                Some("messages"),
            ))
        }
        None => fields
            .get("prompt")
            .map(Value::to_string)
            .unwrap_or_default(),
    };
    let facts = RequestFacts {
        client,
        prompt_tokens: i64::max(1, prompt_bytes(&fields)),
        prefix_blocks: memory::prefix_blocks(prompt_text.as_bytes()),
        tokens_per_block: (memory::BLOCK_BYTES / 4) as i64,
        session: session.or_else(|| {
            let user = fields.get("user").and_then(Value::as_str)?;
            Some(memory::text_key(user.as_bytes()))
        }),
        cell: Some(memory::cell_key(
            memory::round_half_even(client.lat) as i64,
            memory::round_half_even(client.lon) as i64,
            model,
        )),
    };
    let loads: Vec<RegionLoad> = config
        .regions
        .iter()
        .zip(&state.in_flight)
        .map(|(region, in_flight)| RegionLoad {
            name: region.name.clone(),
            location: region.location,
            ready_replicas: 1.0,
            running: 0.0,
            waiting: 0.0,
            in_flight: in_flight.load(Ordering::Relaxed) as f64,
            kv_cache_usage: 0.0,
            rtt_correction_ms: 0.0,
            cold_start_ms: 0.0,
        })
        .collect();
    let decision = {
        let mut memory = state.memory.lock().expect("the memory lock");
        choose(
            &loads,
            &facts,
            &mut memory,
            &state.profiles,
            &state.config.scoring,
            &state.network,
        )
    };
    let Some(decision) = decision else {
        return Ok(openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no region",
            None,
        ));
    };
    for name in &decision.ranked {
        let index = config
            .regions
            .iter()
            .position(|r| &r.name == name)
            .expect("a ranked region is configured");
        let uri: Uri = match format!("{}{}", config.regions[index].upstream, path).parse() {
            Ok(uri) => uri,
            Err(_) => continue,
        };
        let forward = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(bytes.clone()))
            .expect("a valid request");
        let in_flight = state.in_flight[index].clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = match state.client.request(forward).await {
            Ok(answer) => answer,
            Err(_) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                continue; // failover before the first byte
            }
        };
        remember(
            &mut state.memory.lock().expect("the memory lock"),
            name,
            &facts,
            &decision,
        );
        let (parts, mut upstream) = answer.into_parts();
        let (mut sender, body) = Body::channel();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = upstream.data().await {
                if sender.send_data(chunk).await.is_err() {
                    break; // the client is gone
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        return Ok(Response::from_parts(parts, body));
    }
    Ok(openai_error(
        StatusCode::BAD_GATEWAY,
        "every region failed",
        None,
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: relay_probe CONFIG.json");
    let text = std::fs::read_to_string(&path).expect("a readable config");
    let config: Config = serde_json::from_str(&text).expect("a valid config");
    let [earth_radius_km, rtt_intercept_ms, rtt_ms_per_km] = config.network;
    let profiles = config.regions.iter().map(|r| r.profile).collect();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let port = config.port;
    let state = Arc::new(State {
        in_flight: config
            .regions
            .iter()
            .map(|_| Arc::new(AtomicI64::new(0)))
            .collect(),
        profiles,
        network: Network {
            earth_radius_km,
            rtt_intercept_ms,
            rtt_ms_per_km,
        },
        memory: Mutex::new(RoutingMemory::new(100_000)),
        client: Client::builder().build(connector),
        config,
    });
    let make = make_service_fn(move |_| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(service_fn(move |request| handle(request, state.clone()))) }
    });
    hyper::Server::bind(&([127, 0, 0, 1], port).into())
        .tcp_nodelay(true)
        .serve(make)
        .await
        .expect("serving");
}
