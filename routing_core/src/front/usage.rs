//! The tokens an answer says it used (its `usage`), read from its last bytes, for the keys
//! charged tokens: a non-streamed answer ends with its usage, a stream sends it in its
//! last event when asked (`stream_options.include_usage`). Both of the router's paths read
//! it here: the front, and the Python app through this module's Python face.
//!
//! A stream the router must settle a token charge on is asked for its usage even when the
//! client did not ask; that event, which such a client never expected (it has no
//! choices), is taken out of what the client gets.

use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Usage comes last: it is within this many bytes of an answer's end.
pub const USAGE_TAIL_BYTES: usize = 64 * 1024;
const SSE_EVENT_END: &[u8] = b"\n\n";
/// An event longer than this is relayed as it comes, not held back whole.
pub const MAX_HELD_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
struct Usage {
    total_tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
}

/// An answer's last `USAGE_TAIL_BYTES` or more.
#[derive(Default)]
pub struct Tail(Vec<u8>);

impl Tail {
    pub fn keep(&mut self, chunk: &[u8]) {
        self.0.extend_from_slice(chunk);
        if self.0.len() > 2 * USAGE_TAIL_BYTES {
            let cut = self.0.len() - USAGE_TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    /// The answer's total tokens, from the last usage object in it; None if it has none.
    pub fn used_tokens(&self) -> Option<i64> {
        used_tokens(&self.0)
    }
}

/// The answer's total tokens, from the last usage object in `tail`; None if it has none.
pub fn used_tokens(tail: &[u8]) -> Option<i64> {
    let key = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = find_last(&tail[..end], key) {
        end = at;
        let rest = skip_space(&tail[at + key.len()..]);
        let rest = match rest.strip_prefix(b":") {
            Some(rest) => skip_space(rest),
            None => continue,
        };
        if !rest.starts_with(b"{") {
            continue; // `"usage": null`, as a stream's other events may say
        }
        let mut objects = serde_json::Deserializer::from_slice(rest).into_iter::<Usage>();
        let usage = match objects.next() {
            Some(Ok(usage)) => usage,
            _ => return None,
        };
        return match usage {
            Usage {
                total_tokens: Some(total),
                ..
            } => Some(total),
            Usage {
                prompt_tokens: None,
                completion_tokens: None,
                ..
            } => None,
            Usage {
                prompt_tokens,
                completion_tokens,
                ..
            } => Some(prompt_tokens.unwrap_or(0) + completion_tokens.unwrap_or(0)),
        };
    }
    None
}

fn find_first(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn skip_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

pub fn asks_for_usage(fields: &Map<String, Value>) -> bool {
    let include = fields
        .get("stream_options")
        .and_then(|o| o.get("include_usage"));
    include == Some(&Value::Bool(true))
}

/// The request's body with its stream asking for usage, its other options kept.
pub fn body_asking_for_usage(fields: &Map<String, Value>) -> Bytes {
    let mut fields = fields.clone();
    let mut options = match fields.remove("stream_options") {
        Some(Value::Object(options)) => options,
        _ => Map::new(),
    };
    options.insert("include_usage".to_string(), Value::Bool(true));
    fields.insert("stream_options".to_string(), Value::Object(options));
    Bytes::from(serde_json::to_vec(&fields).expect("a JSON object serialises"))
}

/// Relays a stream's whole events only, without its usage event (the one with no choices
/// and a usage): fed chunks as they come, it holds back an event cut across chunks until
/// its end arrives.
#[derive(Default)]
pub struct UsageEventFilter {
    pending: Vec<u8>,
}

impl UsageEventFilter {
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let mut data = std::mem::take(&mut self.pending);
        data.extend_from_slice(chunk);
        let end = match find_last(&data, SSE_EVENT_END) {
            Some(end) => end + SSE_EVENT_END.len(),
            None if data.len() > MAX_HELD_BYTES => return Bytes::from(data),
            None => {
                self.pending = data;
                return Bytes::new();
            }
        };
        self.pending = data.split_off(end);
        if find_last(&data, b"\"usage\"").is_none() {
            return Bytes::from(data);
        }
        let mut kept = Vec::with_capacity(data.len());
        for event in whole_events(&data) {
            if !is_usage_event(event) {
                kept.extend_from_slice(event);
            }
        }
        Bytes::from(kept)
    }

    /// What is left when the stream ends: a last event cut short, relayed as it is.
    pub fn rest(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.pending))
    }
}

/// The whole events in `data`, each with its end.
fn whole_events(data: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut start = 0;
    while let Some(at) = find_first(&data[start..], SSE_EVENT_END) {
        let end = start + at + SSE_EVENT_END.len();
        events.push(&data[start..end]);
        start = end;
    }
    events
}

/// `data: {...}` with `"choices": []` and a usage.
fn is_usage_event(event: &[u8]) -> bool {
    let data = match event.strip_prefix(b"data:") {
        Some(data) => data,
        None => return false,
    };
    match serde_json::from_slice::<Map<String, Value>>(skip_space(data)) {
        Ok(payload) => {
            let no_choices = payload
                .get("choices")
                .and_then(Value::as_array)
                .map_or(false, Vec::is_empty);
            no_choices && payload.get("usage").map_or(false, Value::is_object)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_last_object_said() {
        let mut tail = Tail::default();
        tail.keep(
            b"data: {\"usage\": null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,",
        );
        tail.keep(b"\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n");
        assert_eq!(tail.used_tokens(), Some(12));
        let mut whole = Tail::default();
        whole.keep(b"{\"id\":\"x\",\"usage\":{\"total_tokens\":30,\"prompt_tokens\":1}}");
        assert_eq!(whole.used_tokens(), Some(30));
        assert_eq!(Tail::default().used_tokens(), None);
    }

    #[test]
    fn the_usage_event_is_taken_out_even_when_cut_across_chunks() {
        let mut filter = UsageEventFilter::default();
        let first = filter.feed(b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"choices\": [],");
        assert_eq!(&first[..], b"data: {\"choices\":[{\"delta\":{}}]}\n\n");
        let second = filter.feed(b" \"usage\": {\"total_tokens\": 3}}\n\ndata: [DONE]\n\n");
        assert_eq!(&second[..], b"data: [DONE]\n\n");
        assert!(filter.rest().is_empty());
    }
}
