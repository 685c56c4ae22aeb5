//! What the Python router tells its compiled front when it starts it: the spec's router
//! settings, read from JSON (geo_router/live/front.py writes it), and each region's state
//! as the router's polls last saw it.

use std::collections::HashMap;

use serde::Deserialize;

use crate::scoring::{LatLon, Profile, Scoring};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontConfig {
    /// host:port clients reach the router at.
    pub listen: String,
    /// host:port of the router's Python app, on loopback: what the front does not serve.
    pub back: String,
    pub models: Vec<ModelConfig>,
    pub regions: Vec<RegionConfig>,
    /// With no keys the router is open.
    pub keys: Vec<KeyConfig>,
    /// Whether the Python app exports spans: then the front records one per request.
    pub traced: bool,
    pub locate: LocateConfig,
    /// (earth radius km, RTT intercept ms, RTT ms per km), meridian_core's.
    pub network: [f64; 3],
    pub scoring: Scoring,
    pub max_body_bytes: usize,
    /// A PEM bundle of the CAs that sign regions' certificates; None: the system's.
    pub region_ca_file: Option<String>,
    /// How long a client may take to send a request's headers (server.py's KEEP_ALIVE_S).
    pub header_timeout_s: f64,
    pub first_byte_timeout_s: f64,
    pub output_token_timeout_s: f64,
    pub upstream_timeout_s: f64,
    pub retry_budget_ratio: f64,
    pub retry_budget_burst: f64,
    pub latency_buckets: Vec<String>,
    pub worker_threads: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    /// Where a region's replicas of the model answer, under its endpoint.
    pub route: String,
    pub max_model_len: i64,
    /// Whether the Python app has the model's tokenizer: then prompts are counted by it.
    pub tokenizer: bool,
    /// Its tokenizer.json: the front counts with it itself when it can read it (tokens.rs).
    pub tokenizer_json: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub location: LatLon,
    /// http://host:port of the region's apps.
    pub endpoint: String,
    pub token: Option<String>,
    pub profile: Profile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocateConfig {
    pub order: Vec<String>,
    pub default: LatLon,
    /// A GeoIP database is open in the Python app, which looks addresses up.
    pub geoip: bool,
    pub trusted_proxy_hops: usize,
}

/// One model's replicas in a region, as its last status said.
#[derive(Clone, Copy, Default)]
pub struct ModelLoad {
    pub ready_replicas: f64,
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: f64,
    /// With no ready replica, how long until one is.
    pub cold_start_ms: f64,
}

/// A region as the router's polls and breakers last saw it.
#[derive(Clone, Default)]
pub struct RegionView {
    pub healthy: bool,
    pub breaker_open: bool,
    /// With no ready replica, whether a request is served once one starts.
    pub may_start: bool,
    /// Per model the region serves, its replicas.
    pub models: HashMap<String, ModelLoad>,
    /// Requests the Python app has in flight there.
    pub in_flight_elsewhere: f64,
}
