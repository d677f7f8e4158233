//! Approval by the user at the MCP client (`approval: {by: user}`). The sidecar plays the
//! server's part of MCP's multi round-trip requests: it answers the call with `input_required`
//! (a form showing the tool and arguments, or the page of `url`) and a sealed `requestState`;
//! the client asks its user and repeats the call with the answer and the state; the sidecar
//! opens the state, checks it binds this caller, tool, arguments and policy and has not expired,
//! takes it once, and forwards the call without its own fields. Clients before 2026-07-28 that
//! declared elicitation are asked with `elicitation/create` on the call's stream ([`stream`]).
//!
//! A server's own `input_required` passes through untouched; the call it completes was decided
//! and counted on its first leg ([`continuation`]).

pub mod continuation;
pub mod seal;
pub mod stream;
pub mod tasks;

use super::caller::unix_now;
use super::refusal::Refused;
use crate::policy::ApprovedBy;
use seal::{Question, Sealer, PREFIX};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The key of the sidecar's question in `inputRequests` and of its answer in `inputResponses`.
pub const INPUT_KEY: &str = "mcp-warden/confirm";
/// The `approvals_total` results of the user's path.
pub const RESULTS: [&str; 6] = [
    "user_asked",
    "user_confirmed",
    "user_declined",
    "user_cancelled",
    "user_replayed",
    "user_unreachable",
];
/// Questions answered and remembered (until they expire) so none is taken twice.
pub const MAX_ANSWERED: usize = 65_536;

/// The sidecar's questions to users: the sealing keys, the answers taken, the questions open on
/// event streams, and the server's own pending questions.
pub struct Confirmations {
    pub sealer: Sealer,
    /// Nonces of answers taken (this sidecar owns them), with their expiry.
    answered: Mutex<HashMap<String, u64>>,
    pub streams: stream::Open,
    pub continuations: continuation::Pending,
    /// Tasks the server created for calls decided here, and their callers.
    pub tasks: tasks::Bound,
}

impl Confirmations {
    pub fn new(key_path: Option<PathBuf>) -> Confirmations {
        Confirmations {
            sealer: Sealer::new(key_path),
            answered: Mutex::default(),
            streams: stream::Open::default(),
            continuations: Default::default(),
            tasks: Default::default(),
        }
    }

    /// Takes the answer to question `nonce` (valid until `exp`): `false` when it was taken
    /// before, or when so many unexpired answers are remembered that one more could not be.
    pub fn take_once(&self, nonce: &str, exp: u64, now: u64) -> bool {
        let mut a = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        if a.contains_key(nonce) {
            return false;
        }
        if a.len() >= MAX_ANSWERED {
            a.retain(|_, e| *e >= now);
            if a.len() >= MAX_ANSWERED {
                return false;
            }
        }
        a.insert(nonce.to_owned(), exp);
        true
    }
}

/// What a client can be asked with, by its declared capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanElicit {
    pub form: bool,
    pub url: bool,
}

impl CanElicit {
    /// From a `capabilities` object (`initialize`, or 2026-07-28's per-request `_meta`): an
    /// empty `elicitation` means form only (2025-06-18).
    pub fn read(capabilities: Option<&RawValue>) -> CanElicit {
        #[derive(Deserialize)]
        struct Caps {
            elicitation: Option<serde_json::Map<String, Value>>,
        }
        let Some(e) = capabilities
            .and_then(|c| serde_json::from_str::<Caps>(c.get()).ok())
            .and_then(|c| c.elicitation)
        else {
            return CanElicit::default();
        };
        CanElicit {
            form: e.is_empty() || e.contains_key("form"),
            url: e.contains_key("url"),
        }
    }

    /// Whether the client can be asked as `by` asks.
    pub fn fits(self, by: &ApprovedBy) -> bool {
        match by {
            ApprovedBy::User { url: Some(_), .. } => self.url,
            ApprovedBy::User { url: None, .. } => self.form,
            ApprovedBy::Approver => false,
        }
    }
}

/// The call a question is about.
pub struct About<'a> {
    pub caller: &'a str,
    pub tool: &'a str,
    /// The canonical arguments, and their SHA-256 (hex).
    pub arguments: &'a str,
    pub arguments_sha256: &'a str,
    pub policy_hash: &'a str,
    pub approval_id: &'a str,
}

impl About<'_> {
    fn binds(&self, q: &Question) -> bool {
        q.caller == self.caller
            && q.tool == self.tool
            && q.args == self.arguments_sha256
            && q.policy == self.policy_hash
    }
}

/// The `elicitation/create` params that ask the user about a call.
pub fn elicitation(about: &About, by: &ApprovedBy) -> Value {
    let shown = match serde_json::from_str::<Value>(about.arguments) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| about.arguments.to_owned()),
        Err(_) => about.arguments.to_owned(),
    };
    match by {
        ApprovedBy::User { url: Some(url), .. } => json!({
            "mode": "url",
            "message": format!(
                "An agent asks to call the tool {:?}. Approve exactly this call on the page \
                 that opens, then let the agent go on.",
                about.tool
            ),
            "url": url.replace("{approvalId}", about.approval_id),
            "elicitationId": about.approval_id,
        }),
        _ => json!({
            "mode": "form",
            "message": format!(
                "An agent asks to call the tool {:?} with these arguments:\n{shown}\n\
                 Accept to run this call once; decline to refuse it.",
                about.tool
            ),
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "confirm": {
                        "type": "boolean",
                        "title": format!("Run {} once", about.tool),
                        "default": true
                    }
                }
            }
        }),
    }
}

/// The `input_required` result asking the user about a call, with its sealed state.
pub fn input_required(sealer: &Sealer, about: &About, by: &ApprovedBy, ttl_secs: u64) -> Value {
    let q = Question {
        caller: about.caller.to_owned(),
        tool: about.tool.to_owned(),
        args: about.arguments_sha256.to_owned(),
        policy: about.policy_hash.to_owned(),
        exp: unix_now() + ttl_secs,
        nonce: sealer.nonce(),
    };
    json!({
        "resultType": "input_required",
        "inputRequests": {
            INPUT_KEY: {"method": "elicitation/create", "params": elicitation(about, by)}
        },
        "requestState": sealer.seal(&q),
    })
}

/// What the user answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted: the call may run, once (the question's nonce is still to be taken).
    Accepted,
    Declined,
    Cancelled,
    /// No answer that can be taken: the question expired or was about another policy version;
    /// the user is asked again.
    Stale,
}

/// The answer to the question a retried call carries, read whole: `Refused` when the state is
/// not one the sidecar sealed or was asked for another call (never forwarded).
pub fn answer(
    sealer: &Sealer,
    about: &About,
    state: &str,
    responses: Option<&RawValue>,
    id: &RawValue,
    now: u64,
) -> Result<(Answer, Question), Refused> {
    let refused = |why: &str| Refused::BadParams {
        why: why.to_owned(),
        id: id.to_owned(),
    };
    let q = sealer.open(state).map_err(|_| {
        refused(
            "requestState was not sealed by this policy's mcp-warden sidecars (or was changed): \
             make the call again without it",
        )
    })?;
    if q.caller != about.caller || q.tool != about.tool || q.args != about.arguments_sha256 {
        return Err(refused(
            "requestState was issued for another call (caller, tool or arguments differ): make \
             the call again without it",
        ));
    }
    if q.exp < now || !about.binds(&q) {
        return Ok((Answer::Stale, q));
    }
    let reply = responses
        .and_then(|r| serde_json::from_str::<HashMap<String, Value>>(r.get()).ok())
        .and_then(|mut m| m.remove(INPUT_KEY))
        .filter(|v| v.get("action").is_some_and(Value::is_string));
    let Some(reply) = reply else {
        return Err(refused(&format!(
            "requestState came without an answer to {INPUT_KEY:?} in inputResponses"
        )));
    };
    let a = read_action(&reply);
    Ok((a, q))
}

/// What an elicitation result says: `accept` (unless its `confirm` box was unticked),
/// `decline`, or anything else (`cancel`).
pub fn read_action(result: &Value) -> Answer {
    let unticked = result
        .get("content")
        .and_then(|c| c.get("confirm"))
        .is_some_and(|v| v == &Value::Bool(false));
    match result.get("action").and_then(Value::as_str) {
        Some("accept") if !unticked => Answer::Accepted,
        Some("accept") | Some("decline") => Answer::Declined,
        _ => Answer::Cancelled,
    }
}

/// Whether a `requestState` is the sidecar's own.
pub fn is_ours(state: &str) -> bool {
    state.starts_with(PREFIX)
}

/// The body to forward for a single `tools/call` that carried the sidecar's state: the same
/// message without `params.requestState` and `params.inputResponses` (every other value byte
/// for byte).
pub fn strip(body: &[u8]) -> Option<Vec<u8>> {
    use std::collections::BTreeMap;
    let mut top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body).ok()?;
    let mut params: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(top.get("params")?.get()).ok()?;
    params.remove("requestState");
    params.remove("inputResponses");
    top.insert(
        "params".into(),
        serde_json::value::to_raw_value(&params).ok()?,
    );
    serde_json::to_vec(&top).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_say_which_questions_a_client_can_answer() {
        let read = |s: &str| CanElicit::read(Some(&RawValue::from_string(s.into()).unwrap()));
        assert_eq!(read(r#"{}"#), CanElicit::default());
        assert_eq!(
            read(r#"{"elicitation":{}}"#),
            CanElicit {
                form: true,
                url: false
            }
        );
        assert_eq!(
            read(r#"{"elicitation":{"url":{}}}"#),
            CanElicit {
                form: false,
                url: true
            }
        );
        assert_eq!(
            read(r#"{"elicitation":{"form":{},"url":{}}}"#),
            CanElicit {
                form: true,
                url: true
            }
        );
        assert_eq!(CanElicit::read(None), CanElicit::default());
    }

    #[test]
    fn stripping_removes_only_the_sidecars_fields() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"n":1.50,"big":123456789012345678901234567890},"requestState":"x","inputResponses":{"k":{}},"_meta":{"a":1}}}"#;
        let out = strip(body).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            !s.contains("requestState") && !s.contains("inputResponses"),
            "{s}"
        );
        assert!(
            s.contains(r#""arguments":{"n":1.50,"big":123456789012345678901234567890}"#),
            "{s}"
        );
        assert!(
            s.contains(r#""_meta":{"a":1}"#) && s.contains(r#""id":7"#),
            "{s}"
        );
    }

    #[test]
    fn answers_are_read_and_bound_to_the_call() {
        let sealer = Sealer::new(None);
        let about = About {
            caller: "a",
            tool: "clear",
            arguments: "{}",
            arguments_sha256: "ff",
            policy_hash: "p1",
            approval_id: "id",
        };
        let by = ApprovedBy::User {
            url: None,
            deny_otherwise: false,
        };
        let ir = input_required(&sealer, &about, &by, 60);
        let state = ir["requestState"].as_str().unwrap();
        let id = RawValue::from_string("1".into()).unwrap();
        let resp = |s: &str| RawValue::from_string(s.into()).unwrap();
        let now = unix_now();
        let ok = resp(r#"{"mcp-warden/confirm":{"action":"accept","content":{"confirm":true}}}"#);
        assert_eq!(
            answer(&sealer, &about, state, Some(&ok), &id, now)
                .unwrap()
                .0,
            Answer::Accepted
        );
        let no = resp(r#"{"mcp-warden/confirm":{"action":"decline"}}"#);
        assert_eq!(
            answer(&sealer, &about, state, Some(&no), &id, now)
                .unwrap()
                .0,
            Answer::Declined
        );
        let unticked =
            resp(r#"{"mcp-warden/confirm":{"action":"accept","content":{"confirm":false}}}"#);
        assert_eq!(
            answer(&sealer, &about, state, Some(&unticked), &id, now)
                .unwrap()
                .0,
            Answer::Declined
        );
        let cancel = resp(r#"{"mcp-warden/confirm":{"action":"cancel"}}"#);
        assert_eq!(
            answer(&sealer, &about, state, Some(&cancel), &id, now)
                .unwrap()
                .0,
            Answer::Cancelled
        );
        assert!(
            answer(&sealer, &about, state, None, &id, now).is_err(),
            "no answer"
        );
        // Expired, or another policy version: asked again.
        assert_eq!(
            answer(&sealer, &about, state, Some(&ok), &id, now + 61)
                .unwrap()
                .0,
            Answer::Stale
        );
        let changed = About {
            policy_hash: "p2",
            ..about
        };
        assert_eq!(
            answer(&sealer, &changed, state, Some(&ok), &id, now)
                .unwrap()
                .0,
            Answer::Stale
        );
        // Another caller, tool or arguments: refused.
        for other in [
            About {
                caller: "b",
                ..changed
            },
            About {
                tool: "other",
                ..changed
            },
            About {
                arguments_sha256: "ee",
                ..changed
            },
        ] {
            assert!(answer(&sealer, &other, state, Some(&ok), &id, now).is_err());
        }
        let c = Confirmations::new(None);
        assert!(c.take_once("n1", now + 60, now));
        assert!(!c.take_once("n1", now + 60, now), "an answer is taken once");
    }
}
