//! OpenAI-shaped error answers (geo_router/live/errors.py's, for the errors the front
//! meets itself: regions that fail, a body too large, a region's own error answer).

use hyper::{Body, Response, StatusCode};
use serde_json::{json, Value};

fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        502 => "upstream_error",
        503 => "service_unavailable",
        504 => "timeout_error",
        _ => "server_error",
    }
}

pub fn error_body(status: u16, message: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": error_type(status), "param": param, "code": code}})
}

pub fn error_response(
    status: u16,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
    retry_after: Option<u64>,
) -> Response<Body> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
        .header("content-type", "application/json");
    if let Some(seconds) = retry_after {
        builder = builder.header("retry-after", seconds.to_string());
    }
    builder
        .body(Body::from(
            error_body(status, message, param, code).to_string(),
        ))
        .expect("an error response is well formed")
}

/// A last SSE event for a stream that broke after its first byte was sent.
pub fn sse_error_event(status: u16, message: &str, code: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        error_body(status, message, None, Some(code))
    )
    .into_bytes()
}

const MAX_RELAYED_MESSAGE: usize = 1000;

/// A region's error answer in OpenAI's shape with the engine's message, without the
/// serving stack's internals: Ray Serve LLM's "Message: <the engine's>, Internal
/// exception: ..." keeps its first part, and " (Request ID: ...)" goes.
pub fn relayed_error(status: u16, body: &[u8]) -> Response<Body> {
    let error = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let message = error
        .as_ref()
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str);
    let message = match message {
        Some(message) => message,
        None => {
            return error_response(
                status,
                &format!("the region answered HTTP {status}"),
                None,
                None,
                None,
            )
        }
    };
    let engine_part = message
        .strip_prefix("Message: ")
        .and_then(|rest| rest.find(", Internal exception: ").map(|end| &rest[..end]))
        .unwrap_or(message);
    let mut cleaned = without_request_ids(engine_part);
    if let Some((cut, _)) = cleaned.char_indices().nth(MAX_RELAYED_MESSAGE) {
        cleaned.truncate(cut);
    }
    let param = error
        .as_ref()
        .and_then(|e| e.get("param"))
        .and_then(Value::as_str);
    error_response(status, &cleaned, param, None, None)
}

fn without_request_ids(text: &str) -> String {
    const OPEN: &str = " (Request ID: ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        match rest[start + OPEN.len()..].find(')') {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + OPEN.len() + end + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}
