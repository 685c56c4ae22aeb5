//! W3C trace context for what the front serves, as the router's Python spans have it
//! (geo_router/live/tracing.py): a server span per request that continues the caller's
//! `traceparent` and is handed on to the region in its own. The front records each span;
//! the Python app exports it through OpenTelemetry, with these ids.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;

const SAMPLED: u8 = 0x01;
const RANDOM_TRACE_ID: u8 = 0x02;

/// One request's span, from its start.
#[derive(Clone)]
pub struct Trace {
    pub trace_id: String,
    pub span_id: String,
    /// The caller's span and its flags, when the caller sent a valid `traceparent`.
    pub parent_span_id: Option<String>,
    pub caller_flags: u8,
    pub tracestate: Option<String>,
    pub start_unix_ns: u64,
}

/// A finished span, as the Python app exports it.
pub struct SpanRecord {
    pub name: String,
    pub trace: Trace,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, String)>,
    pub status_code: i64,
    /// The outcome, for a span that did not end in a 2xx.
    pub error: Option<String>,
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn random_hex(halves: usize) -> String {
    let mut text = String::with_capacity(16 * halves);
    while text.len() < 16 * halves {
        let value = RandomState::new().build_hasher().finish();
        if value != 0 {
            text.push_str(&format!("{value:016x}"));
        }
    }
    text
}

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The caller's (trace id, span id, flags), as OpenTelemetry's W3C propagator reads
/// `traceparent`; None for a missing or invalid one.
fn caller_context(headers: &HeaderMap) -> Option<(String, String, u8)> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut fields = value.trim_matches([' ', '\t']).splitn(5, '-');
    let (version, trace_id, span_id, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && is_hex(span_id, 16)
        && is_hex(flags, 2)
        && !(version == "00" && fields.next().is_some())
        && trace_id.bytes().any(|b| b != b'0')
        && span_id.bytes().any(|b| b != b'0');
    let flags = u8::from_str_radix(flags, 16).ok()?;
    valid.then(|| (trace_id.to_string(), span_id.to_string(), flags))
}

impl Trace {
    /// The request's span: a child of the caller's, or the root of a new trace.
    pub fn begin(headers: &HeaderMap) -> Trace {
        let start_unix_ns = unix_ns();
        let span_id = random_hex(1);
        match caller_context(headers) {
            Some((trace_id, parent, caller_flags)) => Trace {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                caller_flags,
                tracestate: headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                start_unix_ns,
            },
            None => Trace {
                trace_id: random_hex(2),
                span_id,
                parent_span_id: None,
                caller_flags: 0,
                tracestate: None,
                start_unix_ns,
            },
        }
    }

    /// This span's flags, as OpenTelemetry's SDK sets them: sampled as its caller's are
    /// (parent-based; a trace that starts here is), and the trace id random where the
    /// caller's is (one made here is).
    fn flags(&self) -> u8 {
        match self.parent_span_id {
            Some(_) => self.caller_flags & (SAMPLED | RANDOM_TRACE_ID),
            None => SAMPLED | RANDOM_TRACE_ID,
        }
    }

    /// What the region is sent: this span as its parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags())
    }

    /// The span, ended now with `outcome` (an HTTP status, or how the answer ended).
    pub fn finish(
        &self,
        name: String,
        attributes: Vec<(&'static str, String)>,
        outcome: &str,
    ) -> SpanRecord {
        let status_code = outcome.parse().unwrap_or(502);
        SpanRecord {
            name,
            trace: self.clone(),
            end_unix_ns: unix_ns(),
            attributes,
            status_code,
            error: (!outcome.starts_with('2')).then(|| outcome.to_string()),
        }
    }
}
