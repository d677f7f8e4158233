//! Every way the sidecar refuses a request itself, before or instead of forwarding it. Each
//! variant owns its HTTP status, its JSON-RPC error code and its message, so a refusal reads the
//! same wherever it is raised; [`Refused::response`] is the one place they become HTTP.
//!
//! Denials by policy are not refusals: they are the answers of `denial` (the call was read and
//! decided; the agent sees the policy's reason).

use crate::mcp::{code, raw_to_value, Malformed};
use crate::serve::{json, Body};
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::Duration;

/// Why the sidecar refused a request.
#[derive(Debug)]
pub(super) enum Refused {
    /// No valid policy is loaded: nothing is forwarded.
    NoPolicy,
    /// `Host` or `Origin` names a place the sidecar does not serve (DNS rebinding, a foreign page).
    Place(String),
    /// A request other than a POST with a body, which the gate would not decide.
    BodyOnMethod(Method),
    /// A POST to a path that is neither the MCP path nor a passthrough path.
    NotMcpPath {
        path: String,
        mcp_path: String,
    },
    MethodNotAllowed {
        method: Method,
        path: String,
    },
    /// Content-Type, charset or Content-Encoding the gate cannot read.
    UnsupportedMedia(String),
    /// An `Mcp-Session-Id` that cannot key a counter.
    SessionId(String),
    TooLarge(usize),
    BodyCutOff,
    /// The bodies held across all requests reached their budget.
    Busy,
    BodyTimeout(Duration),
    /// The body is not MCP the gate can decide.
    Malformed(Malformed),
    BatchUnderVersion(String),
    BatchWithRoutingHeaders,
    /// `Mcp-Method` or `Mcp-Name` says something else than the body.
    HeaderMismatch {
        header: &'static str,
        id: Option<Box<RawValue>>,
    },
    /// An `Mcp-Param-*` header that does not say what the arguments say, or cannot be checked.
    ParamMismatch {
        why: String,
        id: Box<RawValue>,
    },
    /// A protocol version the sidecar does not know (shown clipped).
    UnknownVersion(String),
    CallWithoutId,
    UnreadableArguments(Box<RawValue>),
    /// Params the sidecar cannot take (arguments an approval could not name exactly, a
    /// `requestState` it did not seal, a task another caller created), named in `why`.
    BadParams {
        why: String,
        id: Box<RawValue>,
    },
    /// An identity header sent twice, too long or not visible ASCII.
    IdentityHeader(String),
    /// The policy needs an identity the request does not prove (`WWW-Authenticate` challenge).
    Unauthorized {
        message: String,
        challenge: String,
    },
    /// A legacy session's event stream has too many unread answers.
    StreamBacklog,
    /// The server compressed an event stream, which the sidecar must read to filter.
    CompressedStream,
    Unreachable,
}

impl Refused {
    pub(super) fn status(&self) -> StatusCode {
        use Refused::*;
        match self {
            NoPolicy | Busy | StreamBacklog => StatusCode::SERVICE_UNAVAILABLE,
            Place(_) => StatusCode::FORBIDDEN,
            NotMcpPath { .. } => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            CompressedStream | Unreachable => StatusCode::BAD_GATEWAY,
            BodyOnMethod(_)
            | SessionId(_)
            | BodyCutOff
            | Malformed(_)
            | BatchUnderVersion(_)
            | BatchWithRoutingHeaders
            | HeaderMismatch { .. }
            | ParamMismatch { .. }
            | UnknownVersion(_)
            | CallWithoutId
            | UnreadableArguments(_)
            | BadParams { .. }
            | IdentityHeader(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub(super) fn code(&self) -> i64 {
        use Refused::*;
        match self {
            NoPolicy | Busy | StreamBacklog | CompressedStream | Unreachable => {
                code::INTERNAL_ERROR
            }
            UnsupportedMedia(_) | BodyCutOff | BodyTimeout(_) => code::PARSE_ERROR,
            Malformed(m) => m.code,
            BatchWithRoutingHeaders | HeaderMismatch { .. } | ParamMismatch { .. } => {
                code::HEADER_MISMATCH
            }
            UnreadableArguments(_) | BadParams { .. } => code::INVALID_PARAMS,
            Unauthorized { .. } => code::UNAUTHORIZED,
            Place(_)
            | BodyOnMethod(_)
            | NotMcpPath { .. }
            | MethodNotAllowed { .. }
            | SessionId(_)
            | TooLarge(_)
            | BatchUnderVersion(_)
            | UnknownVersion(_)
            | CallWithoutId
            | IdentityHeader(_) => code::INVALID_REQUEST,
        }
    }

    pub(super) fn message(&self) -> Cow<'_, str> {
        use Refused::*;
        match self {
            NoPolicy => "mcp-warden has no valid policy loaded; nothing is forwarded".into(),
            Place(why) | UnsupportedMedia(why) | SessionId(why) | IdentityHeader(why) => {
                why.as_str().into()
            }
            BodyOnMethod(method) => format!(
                "a {method} request cannot carry a body through mcp-warden; MCP messages are POSTed"
            )
            .into(),
            NotMcpPath { path, mcp_path } => format!(
                "POST {path} is not the MCP endpoint ({mcp_path}); the sidecar forwards POSTs \
                 elsewhere only when started with --passthrough-path {path}"
            )
            .into(),
            MethodNotAllowed { method, path } => {
                format!("{method} is not an MCP method on {path}").into()
            }
            TooLarge(max) => format!("the request body is over the {max}-byte limit").into(),
            BodyCutOff => "the request body was cut off".into(),
            Busy => "the sidecar is holding too many request bodies; retry shortly".into(),
            BodyTimeout(limit) => format!(
                "the request body did not arrive within {} s",
                limit.as_secs_f64()
            )
            .into(),
            Malformed(m) => m.message.as_str().into(),
            BatchUnderVersion(version) => {
                format!("JSON-RPC batches are not allowed under protocol version {version}").into()
            }
            BatchWithRoutingHeaders => {
                "Mcp-Method and Mcp-Name headers cannot describe a batch".into()
            }
            HeaderMismatch { header, .. } => {
                format!("the {header} header does not match the body").into()
            }
            ParamMismatch { why, .. } => why.as_str().into(),
            UnknownVersion(v) => format!(
                "unsupported MCP protocol version {v:?}: mcp-warden reads {}, and refuses a \
                 version it does not know rather than guess how to read it",
                crate::mcp::KNOWN_VERSIONS.join(", ")
            )
            .into(),
            CallWithoutId => "tools/call needs an id".into(),
            UnreadableArguments(_) => "unreadable arguments".into(),
            BadParams { why, .. } => why.as_str().into(),
            Unauthorized { message, .. } => message.as_str().into(),
            StreamBacklog => {
                "this session's event stream has too many unread answers; read it, then retry"
                    .into()
            }
            CompressedStream => {
                "the server compressed its event stream, which mcp-warden cannot filter".into()
            }
            Unreachable => "the MCP server behind mcp-warden is unreachable".into(),
        }
    }

    /// The request id the error answers, when one was read.
    fn id(&self) -> Option<&RawValue> {
        match self {
            Refused::Malformed(m) => m.id.as_deref(),
            Refused::HeaderMismatch { id, .. } => id.as_deref(),
            Refused::UnreadableArguments(id)
            | Refused::BadParams { id, .. }
            | Refused::ParamMismatch { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The JSON-RPC error body.
    pub(super) fn body(&self) -> Vec<u8> {
        let id = self.id().map_or(Value::Null, raw_to_value);
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": self.code(), "message": self.message()}
        }))
        .unwrap_or_default()
    }

    /// The refusal as an HTTP response with a JSON-RPC error body.
    pub(super) fn response(&self) -> Response<Body> {
        let mut resp = json(self.status(), self.body());
        if let Refused::Unauthorized { challenge, .. } = self {
            if let Ok(c) = HeaderValue::from_str(challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
            }
        }
        resp
    }

    /// The response to a refusal made before the request's body was read: the connection cannot
    /// carry another request (the unread body is in the way), so the client is told it closes.
    pub(super) fn response_closing(&self) -> Response<Body> {
        let mut resp = self.response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

impl From<Malformed> for Refused {
    fn from(m: Malformed) -> Refused {
        Refused::Malformed(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_answers_with_its_own_status_code_and_id() {
        let id = |t: &str| RawValue::from_string(t.into()).unwrap();
        let cases: Vec<(Refused, StatusCode, i64, Value)> = vec![
            (
                Refused::NoPolicy,
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL_ERROR,
                Value::Null,
            ),
            (
                Refused::TooLarge(10),
                StatusCode::PAYLOAD_TOO_LARGE,
                code::INVALID_REQUEST,
                Value::Null,
            ),
            (
                Refused::Malformed(Malformed::params("x").with_id(Some(&id("7")))),
                StatusCode::BAD_REQUEST,
                code::INVALID_PARAMS,
                json!(7),
            ),
            (
                Refused::HeaderMismatch {
                    header: "Mcp-Name",
                    id: Some(id("\"a\"")),
                },
                StatusCode::BAD_REQUEST,
                code::HEADER_MISMATCH,
                json!("a"),
            ),
            (
                Refused::Unreachable,
                StatusCode::BAD_GATEWAY,
                code::INTERNAL_ERROR,
                Value::Null,
            ),
        ];
        for (r, status, code, want_id) in cases {
            let resp = r.response();
            assert_eq!(resp.status(), status, "{r:?}");
            let body: Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(body["error"]["code"], code, "{r:?}");
            assert_eq!(body["error"]["message"], r.message().as_ref(), "{r:?}");
            assert_eq!(body["id"], want_id, "{r:?}");
        }
        let r = Refused::Unauthorized {
            message: "unauthorized: no token".into(),
            challenge: r#"Bearer realm="mcp-warden""#.into(),
        };
        let resp = r.response_closing();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="mcp-warden""#
        );
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }
}
