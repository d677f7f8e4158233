//! A denied `tools/call` written as MCP: a tool result with `isError` (or a JSON-RPC error),
//! the reason the agent sees, and the decision record in `_meta`. Reading messages stays in
//! [`crate::mcp`]; this is where the engine's decisions meet the wire.

use crate::engine::{Decision, Outcome};
use crate::mcp::{code, raw_to_value, version_at_least, DECISION_META, RESULT_TYPE_SINCE};
use crate::policy::DenyAs;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// What a denial is about: the tool, the policy's label, and the caller.
pub struct Subject<'a> {
    pub tool: &'a str,
    pub policy: &'a str,
    /// The caller's identity as audit lines show it (a name, a token's hash, or `anonymous`).
    pub caller: &'a str,
    /// For `approval_required`: the id an approval of this exact call must carry.
    pub approval_id: Option<&'a str>,
}

/// The `_meta` decision record of a denial.
fn decision_record(d: &Decision, s: &Subject) -> Value {
    let mut rec = json!({
        "decision": d.outcome.as_str(),
        "tool": s.tool,
        "rule": d.rule,
        "policy": s.policy,
        "identity": s.caller,
    });
    if let Some(g) = d.grant {
        rec["grant"] = json!(g);
    }
    if let Some(id) = s.approval_id {
        rec["approvalId"] = json!(id);
    }
    if let Some(hit) = &d.limit {
        rec["counter"] = json!(hit.counter.name);
        rec["window"] = json!(hit.counter.window.text);
        rec["max"] = json!(hit.counter.max.get());
    }
    if d.limit.is_some() || d.outcome == Outcome::Unlisted {
        rec["retryAfterSeconds"] = json!(retry_after_secs(d));
    }
    rec
}

/// Seconds to wait before a call refused because its tool is not listed yet is retried.
pub const UNLISTED_RETRY_SECS: u64 = 2;

/// Whole seconds to wait before retrying a rate-limited call (at least 1), or one refused
/// because the sidecar has not seen its tool listed yet.
pub fn retry_after_secs(d: &Decision) -> u64 {
    if d.outcome == Outcome::Unlisted {
        return UNLISTED_RETRY_SECS;
    }
    d.limit
        .as_ref()
        .map_or(0, |h| (h.retry_after.as_secs_f64().ceil() as u64).max(1))
}

/// The JSON-RPC answer to a denied `tools/call` (as a JSON value, for batches). `version` is
/// the call's protocol version: from 2026-07-28 on, a result states its `resultType`.
pub fn denial(
    id: &RawValue,
    d: &Decision,
    subject: &Subject,
    deny_as: DenyAs,
    version: &str,
) -> Value {
    let rec = decision_record(d, subject);
    let id = raw_to_value(id);
    match deny_as {
        DenyAs::Result => {
            let mut result = json!({
                "content": [{"type": "text", "text": d.reason}],
                "isError": true,
                "_meta": {DECISION_META: rec}
            });
            if version_at_least(version, RESULT_TYPE_SINCE) {
                result["resultType"] = json!("complete");
            }
            json!({"jsonrpc": "2.0", "id": id, "result": result})
        }
        DenyAs::Error => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": match d.outcome {
                    Outcome::RateLimited => code::RATE_LIMITED,
                    Outcome::Unlisted => code::UNAVAILABLE,
                    _ => code::DENIED,
                },
                "message": d.reason,
                "data": {DECISION_META: rec}
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Call, Engine, EngineOptions};
    use crate::policy::compile_file;

    #[test]
    fn denials_carry_the_reason_and_the_decision() {
        let p = compile_file(
            &json!({"tools": {"t": {"limits": [{"counter": "c", "window": "minute", "max": 1}]},
                               "x": {"action": "deny", "reason": "No."}}}),
        )
        .unwrap();
        let e = Engine::new(p, None, EngineOptions::default());
        let args = Value::Null;
        let id = RawValue::from_string("\"req-1\"".into()).unwrap();
        let d = e.decide(
            &Call {
                tool: "x",
                args: &args,
                caller: "g",
                grant: None,
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            0,
        );
        let subject = |tool| Subject {
            tool,
            policy: "ns/p",
            caller: "system:serviceaccount:agents:ci",
            approval_id: None,
        };
        let v = denial(&id, &d, &subject("x"), DenyAs::Result, "2025-06-18");
        assert_eq!(v["id"], "req-1");
        assert!(
            v["result"].get("resultType").is_none(),
            "older revisions have no resultType"
        );
        let modern = denial(&id, &d, &subject("x"), DenyAs::Result, "2026-07-28");
        assert_eq!(modern["result"]["resultType"], "complete");
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(v["result"]["content"][0]["text"], "No.");
        assert_eq!(
            v["result"]["_meta"][DECISION_META],
            json!({"decision": "deny", "tool": "x", "rule": "tools.x", "policy": "ns/p",
                   "identity": "system:serviceaccount:agents:ci"})
        );
        e.decide(
            &Call {
                tool: "t",
                args: &args,
                caller: "g",
                grant: None,
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            0,
        );
        let d = e.decide(
            &Call {
                tool: "t",
                args: &args,
                caller: "g",
                grant: None,
                session: None,
                approved: false,
                cloak: None,
                seen: None,
            },
            0,
        );
        let v = denial(&id, &d, &subject("t"), DenyAs::Error, "2026-07-28");
        assert_eq!(v["error"]["code"], 429);
        let rec = &v["error"]["data"][DECISION_META];
        assert_eq!(
            (
                rec["decision"].as_str(),
                rec["counter"].as_str(),
                rec["max"].as_u64()
            ),
            (Some("rate_limited"), Some("c"), Some(1))
        );
        assert_eq!(
            rec["retryAfterSeconds"], 63,
            "the call at 0 leaves the window at 63 s (one 3 s sub-bucket late)"
        );
    }
}
