//! The Python module `routing_core`: the thin adapter from Python's plain data to the
//! pure code in `scoring`, `memory` and `rtt_corrector`.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyLong, PyString, PyTuple};

use crate::held;
use crate::memory::{self, Key};
use crate::{limits, rtt_corrector, scoring};

fn network(constants: (f64, f64, f64)) -> scoring::Network {
    let (earth_radius_km, rtt_intercept_ms, rtt_ms_per_km) = constants;
    scoring::Network {
        earth_radius_km,
        rtt_intercept_ms,
        rtt_ms_per_km,
    }
}

/// A Python key as the memory keys it: an int (a prompt block's key) as it is, a string (a
/// session id) and a client area `(lat, lon, model)` as the compiled front keys them,
/// anything else by its Python hash.
fn key_of(object: &PyAny) -> PyResult<Key> {
    if let Ok(text) = object.downcast::<PyString>() {
        return Ok(memory::text_key(text.to_string_lossy().as_bytes()));
    }
    if let Ok(number) = object.downcast::<PyLong>() {
        return Ok(number.extract::<i128>()? as Key);
    }
    if let Ok(tuple) = object.downcast::<PyTuple>() {
        if let Ok((lat, lon, model)) = tuple.extract::<(i64, i64, &str)>() {
            return Ok(memory::cell_key(lat, lon, model));
        }
    }
    Ok(object.hash()? as Key)
}

fn keys_of(objects: &PyAny) -> PyResult<Vec<Key>> {
    objects.iter()?.map(|item| key_of(item?)).collect()
}

fn optional_key(object: &PyAny) -> PyResult<Option<Key>> {
    if object.is_none() {
        Ok(None)
    } else {
        key_of(object).map(Some)
    }
}

/// geo_router/policy/scoring.py's `RequestFacts`, read by attribute.
fn request_facts(object: &PyAny) -> PyResult<scoring::RequestFacts> {
    Ok(scoring::RequestFacts {
        client: object.getattr("client")?.extract()?,
        prompt_tokens: object.getattr("prompt_tokens")?.extract()?,
        prefix_blocks: keys_of(object.getattr("prefix_blocks")?)?,
        tokens_per_block: object.getattr("tokens_per_block")?.extract()?,
        session: optional_key(object.getattr("session")?)?,
        cell: optional_key(object.getattr("cell")?)?,
    })
}

#[pyclass(module = "routing_core")]
#[derive(Clone)]
struct Estimate(scoring::Estimate);

#[pymethods]
impl Estimate {
    #[getter]
    fn region(&self) -> &str {
        &self.0.region
    }
    #[getter]
    fn rtt_ms(&self) -> f64 {
        self.0.rtt_ms
    }
    #[getter]
    fn queue_ms(&self) -> f64 {
        self.0.queue_ms
    }
    #[getter]
    fn prefill_ms(&self) -> f64 {
        self.0.prefill_ms
    }
    #[getter]
    fn cached_tokens(&self) -> i64 {
        self.0.cached_tokens
    }
    #[getter]
    fn ttft_ms(&self) -> f64 {
        self.0.ttft_ms()
    }
    fn __repr__(&self) -> String {
        let e = &self.0;
        format!(
            "Estimate(region={:?}, rtt_ms={}, queue_ms={}, prefill_ms={}, cached_tokens={})",
            e.region, e.rtt_ms, e.queue_ms, e.prefill_ms, e.cached_tokens
        )
    }
}

#[pyclass(module = "routing_core")]
struct RouteDecision(scoring::RouteDecision);

#[pymethods]
impl RouteDecision {
    /// Best first: the order to try regions in.
    #[getter]
    fn ranked<'py>(&self, py: Python<'py>) -> &'py PyTuple {
        PyTuple::new(py, &self.0.ranked)
    }
    /// nearest | load | affinity | session | hold | spill
    #[getter]
    fn reason(&self) -> &'static str {
        self.0.reason
    }
    #[getter]
    fn estimates<'py>(&self, py: Python<'py>) -> &'py PyTuple {
        PyTuple::new(
            py,
            self.0
                .estimates
                .iter()
                .map(|e| Estimate(e.clone()).into_py(py)),
        )
    }
    #[getter]
    fn home_rtt_ms(&self) -> f64 {
        self.0.home_rtt_ms
    }
    #[getter]
    fn rtt_allowance_ms(&self) -> f64 {
        self.0.rtt_allowance_ms
    }
    /// The RTT answering from `region` adds over the nearest region's.
    fn extra_rtt_ms(&self, region: &str) -> f64 {
        self.0.extra_rtt_ms(region)
    }
    fn __repr__(&self) -> String {
        format!(
            "RouteDecision(ranked={:?}, reason={:?})",
            self.0.ranked, self.0.reason
        )
    }
}

/// Which regions recently served which prompt blocks: where a prefix is likely cached.
#[pyclass(module = "routing_core")]
struct PrefixIndex(memory::PrefixIndex);

#[pymethods]
impl PrefixIndex {
    #[new]
    #[args(capacity_blocks = "100_000")]
    fn new(capacity_blocks: usize) -> Self {
        PrefixIndex(memory::PrefixIndex::new(capacity_blocks))
    }
    fn cached_blocks(&mut self, region: &str, blocks: &PyAny) -> PyResult<usize> {
        Ok(self.0.cached_blocks(region, &keys_of(blocks)?))
    }
    fn record(&mut self, region: &str, blocks: &PyAny) -> PyResult<()> {
        self.0.record(region, &keys_of(blocks)?);
        Ok(())
    }
    fn __len__(&self) -> usize {
        self.0.len()
    }
}

/// The price of spilling away from the nearest region (memory.rs says how it is kept).
#[pyclass(module = "routing_core")]
struct SpillPrice(memory::SpillPrice);

#[pymethods]
impl SpillPrice {
    #[new]
    #[args(window = "200.0", step = "0.02", max_move = "0.5", ceiling = "1024.0")]
    fn new(window: f64, step: f64, max_move: f64, ceiling: f64) -> PyResult<Self> {
        if !(window >= 1.0 && ceiling >= 1.0 && max_move >= 0.0 && step >= 0.0) {
            return Err(PyValueError::new_err(
                "SpillPrice needs window >= 1, ceiling >= 1, step and max_move >= 0",
            ));
        }
        Ok(SpillPrice(memory::SpillPrice::new(
            window, step, max_move, ceiling,
        )))
    }
    #[getter]
    fn markup(&self) -> f64 {
        self.0.markup
    }
    fn observe(&mut self, extra_ms: f64, allowance_ms: f64) {
        self.0.observe(extra_ms, allowance_ms)
    }
}

/// What the scorer remembers between requests: prefixes, sessions, last choices, and the
/// price of spilling. Each map holds at most `capacity` keys.
/// Shared with the compiled front, which routes with the same memory.
#[pyclass(module = "routing_core")]
pub(crate) struct RoutingMemory(pub(crate) Arc<Mutex<memory::RoutingMemory>>);

#[pymethods]
impl RoutingMemory {
    #[new]
    #[args(capacity = "100_000")]
    fn new(capacity: usize) -> Self {
        RoutingMemory(Arc::new(Mutex::new(memory::RoutingMemory::new(capacity))))
    }
    /// The spill price's current markup on `spill_rtt_factor`.
    #[getter]
    fn spill_markup(&self) -> f64 {
        held(&self.0).spill_price.markup
    }
    /// How many sessions it holds, each keyed by a 64-bit hash however long its id.
    #[getter]
    fn sessions_held(&self) -> usize {
        held(&self.0).sessions.len()
    }
    /// `region` holds these prompt blocks, as if it had just answered them.
    fn record_prefixes(&self, region: &str, blocks: &PyAny) -> PyResult<()> {
        let blocks = keys_of(blocks)?;
        held(&self.0).prefixes.record(region, &blocks);
        Ok(())
    }
    /// `region` answered `request`, routed by `decision`.
    fn remember(
        &self,
        region: &str,
        request: &PyAny,
        decision: PyRef<RouteDecision>,
    ) -> PyResult<()> {
        let request = request_facts(request)?;
        scoring::remember(&mut held(&self.0), region, &request, &decision.0);
        Ok(())
    }
}

/// Per region, a smoothed (observed time to first byte − predicted TTFT), fading with
/// `half_life_s` (rtt_corrector.rs says how it learns).
/// Shared with the compiled front, which learns into the same corrector.
#[pyclass(module = "routing_core")]
pub(crate) struct RttCorrector(pub(crate) Arc<Mutex<rtt_corrector::RttCorrector>>);

#[pymethods]
impl RttCorrector {
    #[new]
    #[args(
        alpha = "0.2",
        limit_ms = "5000.0",
        max_step_ms = "100.0",
        half_life_s = "300.0"
    )]
    fn new(alpha: f64, limit_ms: f64, max_step_ms: f64, half_life_s: f64) -> PyResult<Self> {
        if !((0.0..=1.0).contains(&alpha)
            && limit_ms >= 0.0
            && max_step_ms >= 0.0
            && half_life_s > 0.0)
        {
            return Err(PyValueError::new_err(
                "RttCorrector needs 0 <= alpha <= 1, limit_ms and max_step_ms >= 0, half_life_s > 0",
            ));
        }
        Ok(RttCorrector(Arc::new(Mutex::new(
            rtt_corrector::RttCorrector::new(alpha, limit_ms, max_step_ms, half_life_s),
        ))))
    }
    /// The region's learned correction; before any evidence, the fleet's average.
    fn correction_for(&self, region: &str, now: f64) -> f64 {
        held(&self.0).correction_for(region, now)
    }
    /// `predicted_ms` includes the correction the request was routed with.
    fn observe(&self, region: &str, predicted_ms: f64, observed_ms: f64, now: f64) {
        held(&self.0).observe(region, predicted_ms, observed_ms, now)
    }
}

/// Every API key's rate limits (limits.rs), by the key's name. Shared with the compiled
/// front, which charges keys from the same buckets.
#[pyclass(module = "routing_core")]
pub(crate) struct RateLimits(pub(crate) Arc<Mutex<limits::RateLimits>>);

#[pymethods]
impl RateLimits {
    /// `keys`: (name, requests per minute or None, tokens per minute or None) each.
    #[new]
    fn new(keys: Vec<(String, Option<f64>, Option<f64>)>) -> Self {
        let keys = keys.into_iter().map(|(name, requests, tokens)| {
            (name, limits::KeyLimits::per_minute(requests, tokens))
        });
        RateLimits(Arc::new(Mutex::new(limits::RateLimits::new(keys))))
    }
    /// Charge `key` one request and `tokens` if both fit now; else charge nothing and
    /// return the seconds until they would (infinite: never).
    fn admit(&self, key: &str, tokens: f64, now: f64) -> f64 {
        held(&self.0)
            .get_mut(key)
            .map_or(0.0, |l| l.admit(tokens, now))
    }
    /// Give back all an admitted request took: it was never sent anywhere.
    fn refund(&self, key: &str, tokens: f64, now: f64) {
        if let Some(limits) = held(&self.0).get_mut(key) {
            limits.refund(tokens, now);
        }
    }
    /// A request charged `charged` tokens ahead turned out to use `used`.
    fn settle(&self, key: &str, charged: f64, used: f64, now: f64) {
        if let Some(limits) = held(&self.0).get_mut(key) {
            limits.settle(charged, used, now);
        }
    }
    /// The limit ("requests" or "tokens") that keeps a request for `tokens` waiting longest.
    fn limiting(&self, key: &str, tokens: f64, now: f64) -> &'static str {
        held(&self.0)
            .get_mut(key)
            .map_or("requests", |l| l.limiting(tokens, now))
    }
    /// Whether `key` is charged tokens, and so settled on its answers' usage.
    fn limits_tokens(&self, key: &str) -> bool {
        held(&self.0).limits_tokens(key)
    }
    /// `key`'s buckets' levels now: (requests, tokens), None where it has no such limit.
    fn levels(&self, key: &str, now: f64) -> (Option<f64>, Option<f64>) {
        match held(&self.0).get_mut(key) {
            Some(limits) => {
                let requests = limits.requests.as_mut().map(|b| b.level_at(now));
                (requests, limits.tokens.as_mut().map(|b| b.level_at(now)))
            }
            None => (None, None),
        }
    }
}

fn profile_of(profiles: &PyAny, region: &str) -> PyResult<scoring::Profile> {
    let profile = profiles
        .get_item(region)
        .map_err(|_| PyKeyError::new_err(format!("no replica profile for region {region:?}")))?;
    profile.extract()
}

/// One region's estimate of `request`'s time to first token, `cached_tokens` of its prompt
/// cached there. `network` is (earth radius km, RTT intercept ms, RTT ms per km).
#[pyfunction]
fn estimate(
    region: scoring::RegionLoad,
    request: &PyAny,
    cached_tokens: i64,
    profile: scoring::Profile,
    scoring: scoring::Scoring,
    network_constants: (f64, f64, f64),
) -> PyResult<Estimate> {
    Ok(Estimate(scoring::estimate(
        &region,
        &request_facts(request)?,
        cached_tokens,
        &profile,
        &scoring,
        &network(network_constants),
    )))
}

/// Rank `regions` for `request`; None if there are none. `profiles` maps each region's
/// name to its replica profile.
#[pyfunction]
fn choose(
    regions: Vec<scoring::RegionLoad>,
    request: &PyAny,
    memory: PyRef<RoutingMemory>,
    profiles: &PyAny,
    scoring: scoring::Scoring,
    network_constants: (f64, f64, f64),
) -> PyResult<Option<RouteDecision>> {
    let profiles: Vec<scoring::Profile> = regions
        .iter()
        .map(|r| profile_of(profiles, &r.name))
        .collect::<PyResult<_>>()?;
    let request = request_facts(request)?;
    let decision = scoring::choose(
        &regions,
        &request,
        &mut held(&memory.0),
        &profiles,
        &scoring,
        &network(network_constants),
    );
    Ok(decision.map(RouteDecision))
}

/// Chained keys of the prompt text's leading whole blocks (memory.rs's `prefix_blocks`).
#[pyfunction]
fn prefix_blocks<'py>(py: Python<'py>, text: &PyString) -> &'py PyTuple {
    PyTuple::new(py, memory::prefix_blocks(text.to_string_lossy().as_bytes()))
}

/// The scorer's classes and functions, added to the module `routing_core` (lib.rs).
pub(crate) fn register(module: &PyModule) -> PyResult<()> {
    module.add_class::<Estimate>()?;
    module.add_class::<RouteDecision>()?;
    module.add_class::<PrefixIndex>()?;
    module.add_class::<SpillPrice>()?;
    module.add_class::<RoutingMemory>()?;
    module.add_class::<RttCorrector>()?;
    module.add_class::<RateLimits>()?;
    module.add_function(wrap_pyfunction!(estimate, module)?)?;
    module.add_function(wrap_pyfunction!(choose, module)?)?;
    module.add_function(wrap_pyfunction!(prefix_blocks, module)?)?;
    module.add("BLOCK_BYTES", memory::BLOCK_BYTES)?;
    Ok(())
}
