//! What comes back from the server: every `tools/list` result on every stream the client can
//! receive is filtered with the policy loaded at the time it passes (see [`crate::mcp::lists`]).

use super::caller::Caller;
use super::headers::{content_type_is, is_event_stream, strip_hop_by_hop};
use super::State;
use crate::mcp::{lists, sse};
use crate::policy::{Hints, Pinning, Policy};
use crate::serve::json;
use crate::serve::{full, Body};
use crate::tools::definition_hash;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;

/// Largest `tools/list` response read whole to be filtered, and largest SSE event.
pub(super) const MAX_LIST_RESPONSE: usize = 16 << 20;

/// Filters the events of one stream. `pending` holds the ids of the `tools/list` requests whose
/// answers the stream carries, to answer with when a message cannot be read.
#[derive(Clone)]
pub(super) struct ListFilter {
    state: Arc<State>,
    pending: Vec<Value>,
    /// Who the list is for: a grant may show tools the base rules hide, or hide others.
    caller: Caller,
}

impl ListFilter {
    pub(super) fn new(state: Arc<State>, pending: Vec<Value>, caller: Caller) -> ListFilter {
        ListFilter {
            state,
            pending,
            caller,
        }
    }

    /// Filtered data, or the error that replaces it; `None` when it passes unchanged.
    pub(super) fn apply(&self, data: &[u8], pending: &[Value]) -> Option<Vec<u8>> {
        let Some(policy) = self.state.policy.load_full() else {
            return Some(self.error(data, "no policy is loaded"));
        };
        let pol = policy.engine.policy();
        let grant = self.caller.grant(pol);
        let per_caller = !pol.grants.is_empty();
        lists::filter_or_refuse(
            data,
            pending,
            &|t| shown(&self.state, pol, grant, t),
            per_caller,
        )
    }

    fn error(&self, data: &[u8], why: &str) -> Vec<u8> {
        let id = lists::error_id(data, &self.pending);
        serde_json::to_vec(&lists::list_error(id, why)).expect("a JSON value serialises")
    }

    /// What replaces an event over `limit` bytes: an error answering the request it answered,
    /// found from the start of its data, else the one `tools/list` the stream waits for.
    pub(super) fn oversized(&self, limit: usize, start: &[u8], pending: &[Value]) -> Vec<u8> {
        let id = lists::leading_id(start)
            .or_else(|| (pending.len() == 1).then(|| pending[0].clone()))
            .unwrap_or(Value::Null);
        serde_json::to_vec(&lists::oversized_answer(id, limit)).expect("a JSON value serialises")
    }
}

impl sse::Rewrite for ListFilter {
    fn data(&self, data: &[u8]) -> Option<Vec<u8>> {
        self.apply(data, &self.pending)
    }

    fn too_large(&self, limit: usize, start: &[u8]) -> Vec<u8> {
        self.oversized(limit, start, &self.pending)
    }

    fn pass_rest(&self, rest: &[u8]) -> bool {
        !lists::might_carry_tools(rest)
    }
}

/// Whether the client may see a listed tool: some call to it could be allowed (by its rule, or
/// its categories as the definition states them), the sidecar's own listing has the same
/// definition (a server that shows clients something else is caught: see
/// [`crate::tools::catalog`]), and that definition is the pinned one.
fn shown(st: &State, pol: &Policy, grant: Option<usize>, tool: &Value) -> bool {
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return false;
    };
    let hints = pol.categories.in_use().then(|| Hints::of_tool(tool));
    if !pol.uses_tool_knowledge() {
        return pol.listable(name, grant, hints);
    }
    // Every definition a client would be shown is compared with the listing, hidden or not:
    // one the policy hides by its categories may be the truth the listing was spared.
    let hash = definition_hash(tool);
    if !st.tools.observe_shown(name, &hash) || !pol.listable(name, grant, hints) {
        return false;
    }
    let pinned = match pol.pins.get(name) {
        Some(pin) => Some(pin.hash.clone()),
        None if pol.pinning == Pinning::FirstSeen => st.tools.first_hash(name),
        None => None,
    };
    pinned.is_none_or(|p| p == hash)
}

/// Whether a response body is compressed (the sidecar does not decode, so cannot filter, it).
fn encoded(h: &HeaderMap) -> bool {
    h.get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Filters the answer to a POST that held `tools/list` requests with these ids: SSE event by
/// event, JSON whole. What cannot be filtered with certainty — a compressed body, one too large,
/// a success in another content type — becomes a 502 with a JSON-RPC error.
pub(super) async fn filter_response(
    state: Arc<State>,
    ids: Vec<Value>,
    resp: Response<Incoming>,
    caller: Caller,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let id = ids.first().cloned().unwrap_or(Value::Null);
    let refuse = |why: &str| {
        let err = serde_json::to_vec(&lists::list_error(id.clone(), why))
            .expect("a JSON value serialises");
        json(StatusCode::BAD_GATEWAY, err)
    };
    if !parts.status.is_success() || http_body::Body::size_hint(&body).exact() == Some(0) {
        return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    }
    if encoded(&parts.headers) {
        return refuse("the server compressed its answer (Content-Encoding)");
    }
    if is_event_stream(&parts.headers) {
        // Events may be rewritten: the upstream's framing no longer holds.
        parts.headers.remove(header::CONTENT_LENGTH);
        let filter = Arc::new(ListFilter::new(state, ids, caller));
        let body = sse::RewriteEvents::new(
            body.map_err(crate::serve::BoxError::from),
            filter,
            MAX_LIST_RESPONSE,
        );
        return Response::from_parts(parts, body.boxed_unsync());
    }
    if !content_type_is(&parts.headers, "application/json") {
        return refuse("the answer is neither JSON nor an event stream");
    }
    let bytes = match Limited::new(body, MAX_LIST_RESPONSE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse("the answer is unreadable or over 16 MiB"),
    };
    let Some(policy) = state.policy.load_full() else {
        return refuse("no policy is loaded");
    };
    let pol = policy.engine.policy();
    let grant = caller.grant(pol);
    let per_caller = !pol.grants.is_empty();
    match lists::filter_data(&bytes, &|t| shown(&state, pol, grant, t), per_caller) {
        Ok(None) => Response::from_parts(parts, full(bytes)),
        Ok(Some(new)) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(new))
        }
        Err(why) => refuse(&why.to_string()),
    }
}
