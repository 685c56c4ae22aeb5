//! What the front does not serve goes to the router's Python app on loopback, as it
//! came, with the client's address in `x-meridian-peer` (which the front never lets a
//! client set). The answer comes back as the app gave it.

use std::net::IpAddr;

use hyper::http::request::Parts;
use hyper::{Body, Request, Response};

use super::errors::error_response;
use super::Shared;

pub const PEER_HEADER: &str = "x-meridian-peer";

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub async fn to_back(shared: &Shared, parts: Parts, body: Body, peer: IpAddr) -> Response<Body> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://{}{}", shared.config.back, path));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != PEER_HEADER {
            request = request.header(name, value);
        }
    }
    request = request.header(PEER_HEADER, peer.to_string());
    let request = match request.body(body) {
        Ok(request) => request,
        Err(_) => return error_response(400, "malformed request", None, None, None),
    };
    match shared.client.request(request).await {
        Ok(mut answer) => {
            for name in HOP_BY_HOP {
                answer.headers_mut().remove(name); // this connection's, not the client's
            }
            answer
        }
        Err(_) => error_response(
            503,
            "the router is starting or stopping; send the request again",
            None,
            Some("router_unavailable"),
            Some(1),
        ),
    }
}
