//! MCP's JSON-RPC envelope: only what a decision needs (`jsonrpc`, `id`, `method`,
//! `params.name`, `params.arguments`), read with borrowed serde types after [`scan::validate`].
//! Also the bodies the sidecar writes itself: denials and filtered `tools/list` results.

mod fold;
pub mod lists;
pub mod scan;
pub mod sse;

pub use lists::list_error;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

/// Deepest JSON nesting accepted in a gated body.
pub const MAX_DEPTH: usize = 64;

/// JSON-RPC error codes the sidecar answers with.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A `Mcp-Method`/`Mcp-Name` header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// `denyAs: error`: denied by policy (outside the ranges JSON-RPC and MCP reserve).
    pub const DENIED: i64 = 403;
    /// `denyAs: error`: rate limited.
    pub const RATE_LIMITED: i64 = 429;
    /// A call that cannot be decided yet (its tool is not listed yet): retry shortly.
    pub const UNAVAILABLE: i64 = 503;
    /// No valid identity where the policy needs one (sent with HTTP 401).
    pub const UNAUTHORIZED: i64 = 401;
}

/// Key of the decision in a denial's `_meta`.
pub const DECISION_META: &str = "dev.mcpwarden/decision";

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message, borrowed from the body.
#[derive(Debug)]
pub struct Message<'a> {
    pub kind: Kind,
    pub id: Option<&'a RawValue>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<&'a RawValue>,
    /// The message's own bytes (for batches: the item).
    pub raw: &'a RawValue,
}

/// A body: one message or a batch.
#[derive(Debug)]
pub enum Body<'a> {
    Single(Message<'a>),
    Batch(Vec<Message<'a>>),
}

impl<'a> Body<'a> {
    pub fn messages(&self) -> &[Message<'a>] {
        match self {
            Body::Single(m) => std::slice::from_ref(m),
            Body::Batch(v) => v,
        }
    }
}

/// Why a body is not MCP the sidecar can decide: a JSON-RPC error, whose code says what was
/// wrong (the sidecar answers it with HTTP 400).
#[derive(Debug, Clone)]
pub struct Malformed {
    pub code: i64,
    pub message: String,
    /// The request id, when one could be read.
    pub id: Option<Box<RawValue>>,
}

impl Malformed {
    /// Not JSON, or JSON that readers disagree on (`-32700`).
    pub fn parse(message: impl Into<String>) -> Malformed {
        Malformed::new(code::PARSE_ERROR, message)
    }

    /// Not a valid JSON-RPC message (`-32600`).
    pub fn request(message: impl Into<String>) -> Malformed {
        Malformed::new(code::INVALID_REQUEST, message)
    }

    /// A `tools/call` whose params cannot be read (`-32602`).
    pub fn params(message: impl Into<String>) -> Malformed {
        Malformed::new(code::INVALID_PARAMS, message)
    }

    fn new(code: i64, message: impl Into<String>) -> Malformed {
        Malformed {
            code,
            message: message.into(),
            id: None,
        }
    }

    pub fn with_id(mut self, id: Option<&RawValue>) -> Malformed {
        self.id = id.map(ToOwned::to_owned);
        self
    }
}

/// A JSON value as one canonical text: object keys sorted, no whitespace. What approvals hash
/// arguments with and pins hash tool definitions with.
pub fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(v)).expect("a JSON value serialises")
}

pub fn raw_to_value(r: &RawValue) -> Value {
    serde_json::from_str(r.get()).unwrap_or(Value::Null)
}

/// The fields of a message the sidecar reads. Deserialised by hand so that a key which folds to
/// one of them without being it (`Method`, `paramſ`) is refused: see [`fold`].
#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<Cow<'a, str>>,
    id: Option<&'a RawValue>,
    method: Option<Cow<'a, str>>,
    params: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
}

const ENVELOPE_KEYS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON-RPC message object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut e = Envelope::default();
                while let Some(Key(key)) = m.next_key()? {
                    match key.as_ref() {
                        "jsonrpc" => e.jsonrpc = m.next_value::<Borrowed>()?.0,
                        "id" => e.id = m.next_value()?,
                        "method" => e.method = m.next_value::<Borrowed>()?.0,
                        "params" => e.params = m.next_value()?,
                        "result" => e.result = m.next_value()?,
                        "error" => e.error = m.next_value()?,
                        other => skip_unknown(&mut m, other, ENVELOPE_KEYS)?,
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

/// A string value, borrowed from the body when it has no escapes (`null` reads as absent).
struct Borrowed<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(OptStrVisitor).map(Borrowed)
    }
}

struct StrVisitor;

impl<'de> serde::de::Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

struct OptStrVisitor;

impl<'de> serde::de::Visitor<'de> for OptStrVisitor {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(StrVisitor).map(Some)
    }
}

/// Skips the value of a key the sidecar does not read, unless the key folds to one it does.
fn skip_unknown<'de, A: serde::de::MapAccess<'de>>(
    m: &mut A,
    key: &str,
    known: &[&str],
) -> Result<(), A::Error> {
    if let Some(real) = fold::variant_among(key, known) {
        return Err(serde::de::Error::custom(format!(
            "key {key:?} is read as {real:?} by servers that match keys ignoring case; \
             send {real:?} exactly"
        )));
    }
    m.next_value::<serde::de::IgnoredAny>().map(drop)
}

fn invalid(msg: impl Into<String>) -> Malformed {
    Malformed::request(msg)
}

/// Parses a gated body: the validating scan, then the envelope of each message.
pub fn parse(body: &[u8]) -> Result<Body<'_>, Malformed> {
    scan::validate(body, MAX_DEPTH).map_err(|e| Malformed::parse(format!("parse error: {e}")))?;
    let text = std::str::from_utf8(body).map_err(|_| invalid("not UTF-8"))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| invalid(format!("invalid batch: {e}")))?;
        if items.is_empty() {
            return Err(invalid("an empty batch is not a valid request"));
        }
        let msgs = items
            .into_iter()
            .map(message)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Body::Batch(msgs))
    } else {
        let raw: &RawValue = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        Ok(Body::Single(message(raw)?))
    }
}

/// Largest integer id: every server reads integers up to 2^53 − 1 exactly (JavaScript's limit).
const MAX_SAFE_ID: i64 = (1 << 53) - 1;

/// An id must be a string or an integer that every server echoes as it was sent: `-0` comes back
/// as `0` and `12345678901234567890` as a rounded float, so an answer could not be matched to it.
fn check_id(t: &str) -> Result<(), &'static str> {
    if t.starts_with('"') {
        return Ok(());
    }
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("\"id\" must be a string or an integer");
    }
    if t == "-0" {
        return Err("\"id\" -0 is echoed as 0 by servers: send 0");
    }
    match t.parse::<i64>() {
        Ok(n) if n.abs() <= MAX_SAFE_ID => Ok(()),
        _ => Err("an integer \"id\" must be within ±(2^53 − 1); send a string id instead"),
    }
}

fn message(raw: &RawValue) -> Result<Message<'_>, Malformed> {
    if !raw.get().starts_with('{') {
        return Err(invalid("a JSON-RPC message must be an object"));
    }
    let e: Envelope = serde_json::from_str(raw.get())
        .map_err(|err| invalid(format!("invalid JSON-RPC message: {err}")))?;
    if e.jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\"").with_id(e.id));
    }
    if let Some(id) = e.id {
        check_id(id.get()).map_err(invalid)?;
    }
    let kind = match (&e.method, e.result.is_some(), e.error.is_some()) {
        (Some(_), false, false) => {
            if e.id.is_some() {
                Kind::Request
            } else {
                Kind::Notification
            }
        }
        (Some(_), _, _) => {
            return Err(
                invalid("a message cannot have both \"method\" and \"result\"/\"error\"")
                    .with_id(e.id),
            )
        }
        (None, true, false) | (None, false, true) if e.id.is_some() => Kind::Response,
        (None, true, true) => {
            return Err(
                invalid("a response cannot have both \"result\" and \"error\"").with_id(e.id),
            )
        }
        _ => return Err(invalid("not a request, notification or response").with_id(e.id)),
    };
    Ok(Message {
        kind,
        id: e.id,
        method: e.method,
        params: e.params,
        raw,
    })
}

#[derive(Default)]
struct CallParams<'a> {
    name: Option<Cow<'a, str>>,
    arguments: Option<&'a RawValue>,
    meta: RequestMeta<'a>,
    request_state: Option<Cow<'a, str>>,
    input_responses: Option<&'a RawValue>,
}

const CALL_KEYS: &[&str] = &[
    "name",
    "arguments",
    "_meta",
    "requestState",
    "inputResponses",
];

/// The key of the 2026-07-28 per-request protocol version in `params._meta`.
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
/// The key of the 2026-07-28 per-request client capabilities in `params._meta`.
const CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";

impl<'de> Deserialize<'de> for CallParams<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CallParams<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("tools/call params")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut p = CallParams::default();
                while let Some(Key(key)) = m.next_key()? {
                    match key.as_ref() {
                        "name" => p.name = Some(m.next_value::<Key>()?.0),
                        "arguments" => p.arguments = m.next_value()?,
                        "_meta" => {
                            p.meta = m.next_value::<Option<RequestMeta>>()?.unwrap_or_default()
                        }
                        "requestState" => p.request_state = m.next_value::<Borrowed>()?.0,
                        "inputResponses" => p.input_responses = m.next_value()?,
                        other => skip_unknown(&mut m, other, CALL_KEYS)?,
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

/// The parts of `params._meta` the sidecar reads: the 2026-07-28 per-request protocol version
/// and client capabilities.
#[derive(Default)]
struct RequestMeta<'a> {
    version: Option<Cow<'a, str>>,
    capabilities: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for RequestMeta<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RequestMeta<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut meta = RequestMeta::default();
                while let Some(Key(key)) = m.next_key()? {
                    match key.as_ref() {
                        VERSION_META => meta.version = m.next_value::<Borrowed>()?.0,
                        CAPABILITIES_META => meta.capabilities = m.next_value()?,
                        other => skip_unknown(&mut m, other, &[VERSION_META, CAPABILITIES_META])?,
                    }
                }
                Ok(meta)
            }
        }
        d.deserialize_map(V)
    }
}

/// The parts of a `tools/call` the engine reads.
#[derive(Debug)]
pub struct ToolCall<'a> {
    pub name: Cow<'a, str>,
    pub arguments: Option<&'a RawValue>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, sent by 2026-07-28 clients.
    pub protocol_version: Option<Cow<'a, str>>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]` (2026-07-28).
    pub client_capabilities: Option<&'a RawValue>,
    /// `params.requestState`: a retry after `input_required` (2026-07-28).
    pub request_state: Option<Cow<'a, str>>,
    /// `params.inputResponses`: the answers a retry carries (2026-07-28).
    pub input_responses: Option<&'a RawValue>,
}

/// The protocol revisions the sidecar knows how to read; a request naming another is refused,
/// never read as the nearest one.
pub const KNOWN_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// Whether the sidecar knows protocol revision `v`.
pub fn known_version(v: &str) -> bool {
    KNOWN_VERSIONS.contains(&v)
}

/// The first protocol revision whose results carry `resultType`.
pub const RESULT_TYPE_SINCE: &str = "2026-07-28";

/// Whether a protocol version (`YYYY-MM-DD`) is at least `since`.
pub fn version_at_least(version: &str, since: &str) -> bool {
    version.len() == since.len() && version >= since
}

#[derive(Deserialize)]
struct NameParams<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "taskId")]
    task_id: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    pub fn is_method(&self, m: &str) -> bool {
        self.method.as_deref() == Some(m)
    }

    /// What the 2026-07-28 `Mcp-Name` header must equal: `params.name` of `tools/call` and
    /// `prompts/get`, `params.uri` of `resources/read`, `params.taskId` of the task methods.
    pub fn routing_name(&self) -> Option<Cow<'a, str>> {
        let p: NameParams = serde_json::from_str(self.params?.get()).ok()?;
        match self.method.as_deref()? {
            "tools/call" | "prompts/get" => p.name,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri,
            "tasks/get" | "tasks/update" | "tasks/cancel" => p.task_id,
            _ => None,
        }
    }

    /// Reads `params.name` and `params.arguments` of a `tools/call`.
    pub fn tool_call(&self) -> Result<ToolCall<'a>, Malformed> {
        let bad = |msg: &str| Malformed::params(msg).with_id(self.id);
        let params = self.params.ok_or_else(|| bad("tools/call needs params"))?;
        let p: CallParams = serde_json::from_str(params.get()).map_err(|e| {
            if e.to_string().contains("ignoring case") {
                bad(&format!("invalid tools/call params: {e}"))
            } else {
                bad("tools/call params need a string \"name\"")
            }
        })?;
        let name = p
            .name
            .ok_or_else(|| bad("tools/call params need a string \"name\""))?;
        let arguments = match p.arguments {
            Some(a) if a.get() == "null" => None,
            Some(a) if !a.get().starts_with('{') => {
                return Err(bad("tools/call \"arguments\" must be an object"))
            }
            other => other,
        };
        Ok(ToolCall {
            name,
            arguments,
            protocol_version: p.meta.version,
            client_capabilities: p.meta.capabilities,
            request_state: p.request_state,
            input_responses: p.input_responses,
        })
    }
}

/// The answer to an allowed item of a batch that was not run because another item was denied.
pub fn not_run(id: &RawValue) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": raw_to_value(id),
        "error": {
            "code": code::INVALID_REQUEST,
            "message": "not run: this batch holds a call the policy denies, so none of it was forwarded"
        }
    })
}

/// Bounded label for `requests_total{method}`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    ];
    KNOWN
        .iter()
        .find(|k| **k == method)
        .copied()
        .unwrap_or("_other")
}

#[cfg(test)]
mod tests;
