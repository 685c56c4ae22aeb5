//! The compiled front as the Python router starts and feeds it (geo_router/live/front.py).

use std::collections::HashMap;
use std::net::IpAddr;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::front::config::{FrontConfig, ModelLoad, RegionView};
use crate::front::{self, usage, Events, Level};
use crate::python::{RateLimits, RoutingMemory, RttCorrector};
use crate::scoring::LatLon;

/// The Python object the front tells and asks (front.py's `FrontEvents`).
struct PythonEvents(PyObject);

impl PythonEvents {
    /// The method's answer; an exception is printed (the router's handlers log it) and
    /// taken as no answer.
    fn call<T>(&self, method: &str, args: impl IntoPy<Py<pyo3::types::PyTuple>>) -> Option<T>
    where
        T: for<'a> FromPyObject<'a>,
    {
        Python::with_gil(|py| {
            let answer = self
                .0
                .call_method1(py, method, args)
                .and_then(|a| a.extract::<T>(py));
            answer.map_err(|error| error.print(py)).ok()
        })
    }

    fn tell(&self, method: &str, args: impl IntoPy<Py<pyo3::types::PyTuple>>) {
        self.call::<PyObject>(method, args);
    }
}

impl Events for PythonEvents {
    fn region_failed(&self, region: &str, detail: &str) {
        self.tell("region_failed", (region, detail));
    }
    fn region_answered(&self, region: &str) {
        self.tell("region_answered", (region,));
    }
    fn prompt_tokens(&self, model: &str, texts: &[&str]) -> Option<i64> {
        self.call::<Option<i64>>("prompt_tokens", (model, texts.to_vec()))
            .flatten()
    }
    fn locate_ip(&self, ip: IpAddr) -> Option<LatLon> {
        let found = self
            .call::<Option<(f64, f64)>>("locate_ip", (ip.to_string(),))
            .flatten();
        found.map(|(lat, lon)| LatLon { lat, lon })
    }
    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => "info",
            Level::Warning => "warning",
        };
        self.tell("log", (level, message));
    }
}

/// A finished span, as `Front::take_spans` hands it.
type SpanTuple = (
    String,
    String,
    String,
    Option<String>,
    u8,
    Option<String>,
    u64,
    u64,
    Vec<(String, String)>,
    i64,
    Option<String>,
);

/// A model's replicas in a region: (ready, running, waiting, KV cache usage, cold start ms).
type LoadTuple = (f64, f64, f64, f64, f64);

/// The router's compiled front, serving from construction on.
#[pyclass(module = "routing_core")]
pub(crate) struct Front(front::Front);

/// Relays a stream's whole events without its usage event (src/front/usage.rs).
#[pyclass(module = "routing_core")]
#[derive(Default)]
pub(crate) struct UsageEventFilter(usage::UsageEventFilter);

#[pymethods]
impl UsageEventFilter {
    #[new]
    fn new() -> Self {
        UsageEventFilter::default()
    }

    /// What of `chunk` (and of what it held back) the client gets now.
    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> &'py PyBytes {
        PyBytes::new(py, &self.0.feed(chunk))
    }

    /// What is left when the stream ends: a last event cut short, relayed as it is.
    fn rest<'py>(&mut self, py: Python<'py>) -> &'py PyBytes {
        PyBytes::new(py, &self.0.rest())
    }
}

/// The answer's total tokens, from the last usage object in `tail`; None if it has none.
#[pyfunction]
fn used_tokens(tail: &[u8]) -> Option<i64> {
    usage::used_tokens(tail)
}

/// A byte-level BPE tokenizer as the front reads one (src/front/tokens.rs).
#[pyclass(module = "routing_core")]
pub(crate) struct FrontTokenizer(crate::front::tokens::ByteLevelBpe);

#[pymethods]
impl FrontTokenizer {
    /// Read from a tokenizer.json; ValueError if the front cannot count with it.
    #[new]
    fn new(tokenizer_json: &str) -> PyResult<Self> {
        let text = std::fs::read_to_string(tokenizer_json)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let tokenizer = crate::front::tokens::ByteLevelBpe::from_json(&text);
        tokenizer.map(FrontTokenizer).map_err(PyValueError::new_err)
    }

    /// The tokens of `text`, as `encode(text, add_special_tokens=False)` has them.
    fn count(&self, text: &str) -> i64 {
        self.0.count(text)
    }
}

#[pymethods]
impl Front {
    #[new]
    fn new(
        config_json: &str,
        events: PyObject,
        memory: PyRef<RoutingMemory>,
        corrector: PyRef<RttCorrector>,
        limits: PyRef<RateLimits>,
        monotonic_now: f64,
    ) -> PyResult<Self> {
        let config: FrontConfig = serde_json::from_str(config_json)
            .map_err(|e| PyValueError::new_err(format!("front config: {e}")))?;
        let started = front::Front::start(
            config,
            Box::new(PythonEvents(events)),
            memory.0.clone(),
            corrector.0.clone(),
            limits.0.clone(),
            monotonic_now,
        );
        started.map(Front).map_err(PyOSError::new_err)
    }

    /// A region as the router's polls and breakers see it now.
    #[allow(clippy::too_many_arguments)]
    fn set_region(
        &self,
        name: &str,
        healthy: bool,
        breaker_open: bool,
        may_start: bool,
        models: HashMap<String, LoadTuple>,
        in_flight_elsewhere: f64,
    ) -> PyResult<()> {
        let models = models
            .into_iter()
            .map(|(model, (ready, running, waiting, kv, cold_ms))| {
                let load = ModelLoad {
                    ready_replicas: ready,
                    running,
                    waiting,
                    kv_cache_usage: kv,
                    cold_start_ms: cold_ms,
                };
                (model, load)
            })
            .collect();
        let view = RegionView {
            healthy,
            breaker_open,
            may_start,
            models,
            in_flight_elsewhere,
        };
        self.0.set_region(name, view).map_err(PyValueError::new_err)
    }

    /// The models whose prompts the front counts itself (the others: by the Python app's
    /// tokenizer, or by their bytes).
    fn counts_tokens_of(&self) -> Vec<String> {
        self.0.counts_tokens_of()
    }

    /// Requests the front has in flight to `region`.
    fn in_flight(&self, region: &str) -> i64 {
        self.0.in_flight(region)
    }

    /// Its metric samples: (sample name, ((label, value), ...), value).
    fn metric_samples(&self) -> Vec<(String, Vec<(String, String)>, f64)> {
        let samples = self.0.metric_samples().into_iter();
        samples.map(|s| (s.name, s.labels, s.value)).collect()
    }

    /// Whether to make access-log lines.
    fn set_access_log(&self, on: bool) {
        self.0.set_access_log(on)
    }

    /// Access-log lines since the last call, and how many were dropped meanwhile.
    fn take_access_log(&self) -> (Vec<String>, i64) {
        self.0.take_access_log()
    }

    fn drain(&self, grace_s: f64) {
        self.0.drain(grace_s)
    }

    /// Spans since the last call, each (name, trace id, span id, parent span id, its flags,
    /// tracestate, start ns, end ns, attributes, HTTP status, error), and how many were
    /// dropped meanwhile.
    fn take_spans(&self) -> (Vec<SpanTuple>, i64) {
        let (spans, dropped) = self.0.take_spans();
        let spans = spans.into_iter().map(|s| {
            let attributes = s
                .attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let trace = s.trace;
            (
                s.name,
                trace.trace_id,
                trace.span_id,
                trace.parent_span_id,
                trace.caller_flags,
                trace.tracestate,
                trace.start_unix_ns,
                s.end_unix_ns,
                attributes,
                s.status_code,
                s.error,
            )
        });
        (spans.collect(), dropped)
    }

    /// Whether every answer ended within `timeout_s`.
    fn wait_idle(&self, py: Python, timeout_s: f64) -> bool {
        py.allow_threads(|| self.0.wait_idle(timeout_s))
    }
}

/// The front's classes, added to the module `routing_core` (lib.rs).
pub(crate) fn register(module: &PyModule) -> PyResult<()> {
    module.add_class::<Front>()?;
    module.add_class::<FrontTokenizer>()?;
    module.add_class::<UsageEventFilter>()?;
    module.add_function(wrap_pyfunction!(used_tokens, module)?)?;
    module.add("USAGE_TAIL_BYTES", usage::USAGE_TAIL_BYTES)?;
    module.add("MAX_HELD_BYTES", usage::MAX_HELD_BYTES)?;
    Ok(())
}
