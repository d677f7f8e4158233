//! The HTTP headers the proxy reads or drops: what a gated POST must declare before its body is
//! read, content types, and the hop-by-hop headers that never cross the sidecar.

use super::refusal::Refused;
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

/// A gated POST's content type, encoding, declared length and session id: refused before a byte
/// of the body is read.
pub(super) fn check_gated(h: &HeaderMap, max: usize) -> Result<(), Refused> {
    let unsupported = Refused::UnsupportedMedia;
    let ct = h
        .get(header::CONTENT_TYPE)
        .ok_or_else(|| unsupported("Content-Type application/json is required".into()))?
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type".into()))?;
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(format!(
            "Content-Type {essence:?} is not application/json"
        )));
    }
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.trim().eq_ignore_ascii_case("charset") {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return Err(unsupported(format!(
                    "charset {v:?} is not supported; send UTF-8"
                )));
            }
        }
    }
    for ce in h.get_all(header::CONTENT_ENCODING) {
        let v = ce.to_str().unwrap_or("?").trim();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(unsupported(format!(
                "Content-Encoding {v:?} is not decoded by the sidecar; send the body uncompressed"
            )));
        }
    }
    check_session_id(h)?;
    if let Some(len) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(Refused::TooLarge(max));
        }
    }
    Ok(())
}

/// Longest `Mcp-Session-Id` accepted. Servers issue UUIDs or hashes; a longer value is an attempt
/// to make counter keys or audit lines expensive.
pub(super) const MAX_SESSION_ID: usize = 256;

/// `Mcp-Session-Id`: at most one, of visible ASCII (as the transport specifies), not too long.
fn check_session_id(h: &HeaderMap) -> Result<(), Refused> {
    let bad = Refused::SessionId;
    let mut ids = h.get_all("mcp-session-id").iter();
    let (Some(id), None) = (ids.next(), ids.next()) else {
        return match h.contains_key("mcp-session-id") {
            true => Err(bad("more than one Mcp-Session-Id header".into())),
            false => Ok(()),
        };
    };
    if id.len() > MAX_SESSION_ID {
        return Err(bad(format!(
            "Mcp-Session-Id is over {MAX_SESSION_ID} bytes"
        )));
    }
    if !id.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad("Mcp-Session-Id must be visible ASCII".into()));
    }
    Ok(())
}
