//! What the front reads from a request: the fields geo_router/live/requests.py checks,
//! the session, the client's location and the prompt. Anything it would refuse, or is
//! not sure of, is `None`: the request then goes to the Python app, which answers it,
//! errors included, in one voice.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::HeaderMap;
use serde_json::{Map, Value};

use super::config::LocateConfig;
use crate::scoring::LatLon;

/// The longest session id (X-Session-Id, or the body's `user`) kept affinity for.
const MAX_SESSION_ID_CHARS: usize = 256;
/// More choices than this are charged as this many (requests.py's MAX_CHOICES).
const MAX_CHOICES: i64 = 128;
/// What a chat message costs beyond its text (prompt_tokens.py's TOKENS_PER_MESSAGE).
pub const TOKENS_PER_MESSAGE: i64 = 4;

pub struct Parsed {
    pub model: String,
    pub stream: bool,
    pub fields: Map<String, Value>,
}

/// The endpoint's required input field and whether a string is accepted besides an array.
fn required_input(endpoint: &str) -> (&'static str, bool) {
    match endpoint {
        "chat/completions" => ("messages", false),
        "completions" => ("prompt", true),
        _ => ("input", true),
    }
}

pub fn parse(endpoint: &str, body: &[u8]) -> Option<Parsed> {
    let fields = match serde_json::from_slice(body).ok()? {
        Value::Object(fields) => fields,
        _ => return None,
    };
    let model = fields.get("model")?.as_str().filter(|m| !m.is_empty())?;
    let (input, string_ok) = required_input(endpoint);
    match fields.get(input)? {
        Value::String(_) if string_ok => {}
        Value::Array(items) if !items.is_empty() => {
            if input == "messages" && !items.iter().all(Value::is_object) {
                return None;
            }
        }
        _ => return None,
    }
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return None,
    };
    Some(Parsed {
        model: model.to_string(),
        stream,
        fields,
    })
}

/// The request's session id, `Some(None)` without one, `None` if one is too long.
pub fn session(header: Option<&[u8]>, fields: &Map<String, Value>) -> Option<Option<Vec<u8>>> {
    let user = fields
        .get("user")
        .and_then(Value::as_str)
        .map(str::as_bytes);
    for value in [header, user].into_iter().flatten() {
        if !value.is_empty() {
            let chars = std::str::from_utf8(value).map_or(value.len(), |t| t.chars().count());
            return (chars <= MAX_SESSION_ID_CHARS).then(|| Some(value.to_vec()));
        }
    }
    Some(None)
}

/// The prompt as the model will see it, near enough (prompt.py's `prompt_text`).
pub fn prompt_text(fields: &Map<String, Value>) -> String {
    match fields.get("messages") {
        Some(messages) => messages.to_string(),
        None => match fields.get("prompt") {
            Some(Value::String(prompt)) => prompt.clone(),
            Some(prompt) => prompt.to_string(),
            None => String::new(),
        },
    }
}

/// The texts the model reads (prompt_tokens.py's `prompt_texts`).
pub fn prompt_texts(fields: &Map<String, Value>) -> Vec<&str> {
    if let Some(messages) = fields.get("messages").and_then(Value::as_array) {
        let mut texts = Vec::new();
        for content in messages.iter().filter_map(|m| m.get("content")) {
            match content {
                Value::String(text) => texts.push(text.as_str()),
                Value::Array(parts) => texts.extend(
                    parts
                        .iter()
                        .filter_map(|part| part.get("text").and_then(Value::as_str)),
                ),
                _ => {}
            }
        }
        return texts;
    }
    match fields.get("prompt").or_else(|| fields.get("input")) {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// What a prompt costs beyond its texts: each chat message's role and markers.
pub fn message_overhead(fields: &Map<String, Value>) -> i64 {
    fields
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |m| TOKENS_PER_MESSAGE * m.len() as i64)
}

fn positive_int(value: Option<&Value>) -> Option<i64> {
    value.and_then(Value::as_i64).filter(|n| *n > 0)
}

/// The most completion tokens the request may make the engine generate (requests.py's
/// `completion_cap`).
pub fn completion_cap(
    endpoint: &str,
    fields: &Map<String, Value>,
    prompt_tokens: i64,
    max_model_len: i64,
) -> i64 {
    if endpoint == "embeddings" {
        return 0;
    }
    // Python's `a or b`: a max_completion_tokens of 0 or a non-number falls to max_tokens.
    let asked = match fields.get("max_completion_tokens") {
        Some(v) if is_truthy(v) => Some(v),
        _ => fields.get("max_tokens"),
    };
    let per_choice = positive_int(asked).unwrap_or(0).min(max_model_len);
    let per_choice = if per_choice > 0 {
        per_choice
    } else {
        i64::max(1, max_model_len - prompt_tokens)
    };
    let choices = positive_int(fields.get("n"))
        .filter(|n| *n > 1)
        .map_or(1, |n| n.min(MAX_CHOICES));
    choices * per_choice
}

fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Where the client is (locate.py): `Err(())` when a header it sent is malformed, which
/// the Python app answers; `Ok(None)` when only a GeoIP lookup can tell, for `ip`.
pub enum Located {
    At(LatLon),
    LookUp(IpAddr),
}

pub fn locate(headers: &HeaderMap, peer: IpAddr, config: &LocateConfig) -> Result<Located, ()> {
    for source in &config.order {
        match source.as_str() {
            "header" => {
                if let Some(value) = headers.get("x-client-location") {
                    let text = value.to_str().map_err(|_| ())?;
                    return lat_lon(text).map(Located::At).ok_or(());
                }
            }
            "cdn" => {
                for (lat, lon) in [
                    ("cloudfront-viewer-latitude", "cloudfront-viewer-longitude"),
                    ("cf-iplatitude", "cf-iplongitude"),
                ] {
                    let (lat, lon) = (
                        coordinate(headers.get(lat), 90.0),
                        coordinate(headers.get(lon), 180.0),
                    );
                    if let (Some(lat), Some(lon)) = (lat, lon) {
                        return Ok(Located::At(LatLon { lat, lon }));
                    }
                }
            }
            "geoip" if config.geoip => {
                if let Some(ip) = client_ip(headers, peer, config.trusted_proxy_hops) {
                    return Ok(Located::LookUp(ip));
                }
            }
            _ => {}
        }
    }
    Ok(Located::At(config.default))
}

fn python_float(text: &str) -> Option<f64> {
    let number: f64 = text.trim().parse().ok()?;
    number.is_finite().then_some(number)
}

fn lat_lon(text: &str) -> Option<LatLon> {
    let (lat, lon) = text.split_once(',')?;
    let (lat, lon) = (python_float(lat)?, python_float(lon)?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        .then_some(LatLon { lat, lon })
}

fn coordinate(value: Option<&hyper::header::HeaderValue>, limit: f64) -> Option<f64> {
    let number = python_float(value?.to_str().ok()?)?;
    (-limit..=limit).contains(&number).then_some(number)
}

fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted_proxy_hops: usize) -> Option<IpAddr> {
    if trusted_proxy_hops == 0 {
        return Some(peer);
    }
    let chain: Vec<&str> = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    chain
        .len()
        .checked_sub(trusted_proxy_hops)
        .and_then(|i| chain[i].parse().ok())
}

/// The caller's request id if it is sane (middleware.py), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    let incoming = headers.get("x-request-id").map(|v| v.as_bytes());
    match incoming {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.iter().all(|b| (0x20..0x7f).contains(b)) =>
        {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => new_id(),
    }
}

fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(n ^ salt);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(0), half(u64::MAX))
}
