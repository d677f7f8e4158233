//! The HTTP headers the proxy reads or drops: content types, and the hop-by-hop headers that
//! never cross the sidecar.

use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) fn is_event_stream(h: &HeaderMap) -> bool {
    content_type_is(h, "text/event-stream")
}

/// Whether the `Content-Type` is `essence` (any parameters, any case).
pub(super) fn content_type_is(h: &HeaderMap, essence: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(essence))
}

/// Removes hop-by-hop headers, and those the `Connection` header names, in place.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    for name in listed {
        h.remove(name);
    }
}
