//! The approval wire: what the controller and the sidecars exchange about approvals — the id a
//! call's approval carries, the approvals file the controller renders ([`ApprovalsFile`]), and
//! what a sidecar's admin API reports ([`Report`]: pending requests and uses spent). The
//! sidecar's store of approvals is `sidecar::approvals`; the McpApproval resource is
//! `crd::approval`.

use crate::policy::sha256_hex;
use serde::{Deserialize, Serialize};

/// The shortest id prefix a decision may name a request by.
pub const MIN_ID_PREFIX: usize = 12;

/// The id an approval must carry to match a call: a hash of everything that must match. Each
/// part is prefixed with its length, so no choice of parts (a tool name holding a separator)
/// can make two different calls share an id.
pub fn approval_id(policy: &str, tool: &str, arguments_sha256: &str, caller: &str) -> String {
    let mut text = String::new();
    for part in [policy, tool, arguments_sha256, caller] {
        text.push_str(&format!("{}:{part};", part.len()));
    }
    sha256_hex(text.as_bytes())
}

/// Arguments as one canonical text: object keys sorted, no whitespace.
pub use crate::mcp::canonical_json as canonical;

/// Whether every number in `v` reads back as exactly one number: a float beyond ±2^53 (an
/// integer literal past 64 bits is read as one) may stand for several literals a server's parser
/// tells apart (Python's integers are exact), so an approval of one would cover another.
pub fn exact_numbers(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.abs() < EXACT),
        Value::Array(items) => items.iter().all(exact_numbers),
        Value::Object(m) => m.values().all(exact_numbers),
        _ => true,
    }
}

/// One granted approval, as the file lists it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Granted {
    pub id: String,
    /// Calls it allows.
    pub uses: u32,
    /// Seconds since the epoch after which it allows nothing.
    pub expires_at: u64,
    /// The pod whose sidecar may honour it (its request came from there); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// What tells this approval from another of the same call (the McpApproval's name): uses
    /// are counted per name, so a call approved again after its first approval was used up
    /// runs again. The id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Granted {
    /// The key its uses are counted under.
    pub(crate) fn key(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// The approvals file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsFile {
    pub approvals: Vec<Granted>,
}

/// A call that needed an approval and had none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub policy: String,
    pub tool: String,
    /// The canonical arguments, unless over 16 KiB.
    pub arguments: Option<String>,
    pub arguments_sha256: String,
    pub identity: String,
    /// Seconds since the epoch.
    pub requested_at: u64,
    /// What the rule grants once approved: calls, within seconds of the approval. Undecided,
    /// the request lapses as many seconds after it was made.
    pub uses: u32,
    pub ttl_seconds: u64,
    /// The tool's metric label (its rule's name; bounded, unlike the tool name).
    #[serde(skip)]
    pub tool_label: String,
}

impl Pending {
    /// Seconds since the epoch after which the request, undecided, lapses.
    pub fn expires_at(&self) -> u64 {
        self.requested_at.saturating_add(self.ttl_seconds)
    }
}

/// How much of an approval this sidecar has spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub used: u32,
    pub uses: u32,
    pub expires_at: u64,
    /// The pods whose calls spent these uses (counted by the approval's owner among a policy's
    /// sidecars, so a use that ran on another pod is named here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_on: Vec<String>,
}

/// What the admin API's `GET /approvals` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub pending: Vec<Pending>,
    pub used: Vec<Spent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn canonical_arguments_keep_apart_what_a_server_keeps_apart() {
        let c = |s: &str| canonical(&serde_json::from_str::<Value>(s).unwrap());
        // Python reads these as different values: so must the approval id.
        assert_ne!(c(r#"{"n":1}"#), c(r#"{"n":1.0}"#), "int and float");
        assert_ne!(
            c(r#"{"n":9007199254740993}"#),
            c(r#"{"n":9007199254740992}"#)
        );
        assert_ne!(c(r#"{"s":"a"}"#), c(r#"{"S":"a"}"#), "keys in another case");
        assert_ne!(c(r#"{"s":"a\u0000"}"#), c(r#"{"s":"a"}"#));
        // The same value written two ways is one call.
        assert_eq!(c(r#"{"s":"\u0041"}"#), c(r#"{"s":"A"}"#), "escapes");
        assert_eq!(c(r#"{"n":1e2}"#), c(r#"{"n":100.0}"#), "float forms");
        // Past 2^53 two literals can read as one float: such arguments are not approvable.
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            c(r#"{"n":18446744073709551616}"#),
            c(r#"{"n":18446744073709551617}"#)
        );
        assert!(!exact_numbers(&v(r#"{"a":[{"n":18446744073709551617}]}"#)));
        assert!(!exact_numbers(&v(r#"{"n":1e300}"#)));
        assert!(exact_numbers(&v(
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":0.5}"#
        )));
    }

    #[test]
    fn canonical_arguments_ignore_key_order_and_whitespace_only() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"d": 0, "c": 2}], "x": "s"}}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":2,"d":0}]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&b),
            r#"{"a":{"x":"s","y":[1,{"c":2,"d":0}]},"b":1}"#
        );
        let c: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[{"c":2,"d":0},1]},"b":1}"#).unwrap();
        assert_ne!(canonical(&a), canonical(&c), "array order matters");
        let id = |p, t, a, i| approval_id(p, t, a, i);
        assert_ne!(id("p", "t", "h", "alice"), id("p", "t", "h", "bob"));
        assert_ne!(id("p", "t", "h", "a"), id("p", "u", "h", "a"));
        assert_ne!(id("p", "t\0h", "x", "a"), id("p", "t", "h\0x", "a"));
    }
}
