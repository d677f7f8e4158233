//! Knowing the server's tools: what the upstream offers, read by mcp-warden's own MCP client
//! (the sidecar at start, on `notifications/tools/list_changed` and every few minutes; `check
//! --server` and `pin --server` from a laptop), with each definition's canonical hash (pins) and
//! categories (annotations), and the policy checked against it.
//!
//! - [`client`]: an MCP client that lists tools over streamable HTTP (stateful, stateless and the
//!   sessionless 2026-07-28 revision) and the legacy HTTP+SSE transport.
//! - [`catalog`]: the sidecar's live view: the latest list, the definition each tool was first
//!   seen with, and what changed.
//! - [`report`]: a policy against a tool list: rule keys and globs that match nothing, argument
//!   paths a tool's input schema does not have, tools only `default: allow` lets through, changed
//!   pins.

pub mod catalog;
pub mod client;
pub mod params;
pub mod report;
pub mod seen;

use crate::policy::{sha256_hex, Hints};
use serde::Serialize;
use serde_json::{Map, Value};

/// Most tools kept from one server's list; the rest are dropped (and reported).
pub const MAX_TOOLS: usize = 1024;

/// The fields of a tool definition its hash covers.
const HASHED: [&str; 5] = [
    "name",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// The pin of a definition: `sha256:` and the hex SHA-256 of the canonical JSON (keys sorted, no
/// whitespace) of its name, description, input and output schema and annotations. Other fields
/// (`title`, `icons`, `_meta`) may change without changing what the tool does, so they are left
/// out.
pub fn definition_hash(tool: &Value) -> String {
    let mut covered = Map::new();
    for key in HASHED {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            covered.insert(key.to_owned(), v.clone());
        }
    }
    format!(
        "sha256:{}",
        sha256_hex(crate::mcp::canonical_json(&Value::Object(covered)).as_bytes())
    )
}

/// One tool as the server lists it, with what mcp-warden reads from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolDef {
    pub name: String,
    /// [`definition_hash`].
    pub hash: String,
    /// Canonical category names (`destructive`, `read_only`, …).
    pub categories: Vec<&'static str>,
    #[serde(skip)]
    pub hints: Hints,
    /// The top-level argument names its `inputSchema` declares; `None` when it declares no
    /// `properties` (then any name may be right).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Vec<String>>,
    /// Its `x-mcp-header` declarations ([`params`]), or why they cannot be used.
    #[serde(skip)]
    pub params: Result<Vec<params::ParamHeader>, String>,
}

impl ToolDef {
    /// Reads one `tools/list` entry; `None` when it has no string `name`.
    pub fn read(tool: &Value) -> Option<ToolDef> {
        let name = tool.get("name")?.as_str()?.to_owned();
        let hints = Hints::of_tool(tool);
        let arguments = tool
            .get("inputSchema")
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|props| props.keys().cloned().collect());
        Some(ToolDef {
            name,
            hash: definition_hash(tool),
            categories: hints.names(),
            hints,
            arguments,
            params: tool
                .get("inputSchema")
                .map_or(Ok(Vec::new()), params::declared),
        })
    }
}

impl ToolDef {
    /// A tool as a sidecar's `GET /tools` reports it (categories by name); `None` without a
    /// string `name` and `hash`.
    pub fn from_reported(v: &Value) -> Option<ToolDef> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        let hints = Hints::from_names(strings(&v["categories"]).iter().map(String::as_str));
        Some(ToolDef {
            name: v.get("name")?.as_str()?.to_owned(),
            hash: v.get("hash")?.as_str()?.to_owned(),
            categories: hints.names(),
            hints,
            arguments: v.get("arguments").filter(|a| a.is_array()).map(strings),
            params: Ok(Vec::new()),
        })
    }
}

/// Whether message data announces that the server's tool list changed. A byte search: the
/// sidecar only re-lists on it, so a false positive costs one list.
pub fn announces_list_change(data: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"notifications/tools/list_changed";
    data.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_covers_what_the_tool_does_and_nothing_else() {
        let base = json!({"name": "run", "description": "Runs code",
            "inputSchema": {"type": "object", "properties": {"code": {"type": "string"}}},
            "annotations": {"readOnlyHint": false}});
        let h = definition_hash(&base);
        assert!(h.starts_with("sha256:") && h.len() == 71, "{h}");
        let reordered = json!({"annotations": {"readOnlyHint": false},
            "inputSchema": {"properties": {"code": {"type": "string"}}, "type": "object"},
            "description": "Runs code", "name": "run", "title": "Run", "_meta": {"x": 1}});
        assert_eq!(definition_hash(&reordered), h, "key order, title and _meta");
        for (field, value) in [
            (
                "description",
                json!("Runs code. Also sends your files to a third party."),
            ),
            (
                "inputSchema",
                json!({"type": "object", "properties": {"code": {"type": "string"}, "url": {"type": "string"}}}),
            ),
            ("outputSchema", json!({"type": "object"})),
            ("annotations", json!({"readOnlyHint": true})),
            ("name", json!("run2")),
        ] {
            let mut changed = base.clone();
            changed[field] = value;
            assert_ne!(definition_hash(&changed), h, "{field}");
        }
    }

    #[test]
    fn a_definition_is_read_with_its_categories_and_argument_names() {
        let t = ToolDef::read(&json!({"name": "run_cell", "inputSchema": {"type": "object",
            "properties": {"index": {"type": "integer"}}}, "annotations": {"idempotentHint": true}}))
        .unwrap();
        assert_eq!(t.name, "run_cell");
        assert_eq!(t.categories, ["destructive", "open_world", "idempotent"]);
        assert_eq!(t.arguments, Some(vec!["index".to_owned()]));
        assert_eq!(ToolDef::read(&json!({"name": 3})), None);
        assert_eq!(
            ToolDef::read(&json!({"name": "x", "inputSchema": {"type": "object"}}))
                .unwrap()
                .arguments,
            None
        );
    }

    #[test]
    fn a_reported_tool_reads_back_as_the_definition_it_came_from() {
        let t = ToolDef::read(&json!({"name": "w", "inputSchema": {"type": "object",
            "properties": {"path": {}}}, "annotations": {"readOnlyHint": true}}))
        .unwrap();
        let reported = serde_json::to_value(&t).unwrap();
        assert_eq!(ToolDef::from_reported(&reported), Some(t));
    }

    #[test]
    fn list_changes_are_spotted_in_any_message() {
        assert!(announces_list_change(
            br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#
        ));
        assert!(!announces_list_change(
            br#"{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}"#
        ));
    }
}
