//! `Mcp-Param-*` headers (MCP 2026-07-28) checked against the body, like `Mcp-Method` and
//! `Mcp-Name`: an intermediary may route on a header while the server acts on the body, so a
//! request whose headers say something else than its arguments is refused, never forwarded.
//!
//! What a tool declares comes from the sidecar's own listing (`x-mcp-header` in its
//! `inputSchema`, [`crate::tools::params`]). A header is refused when the tool declares no such
//! header, when the argument it mirrors is absent or `null`, or when the two disagree (a
//! `=?base64?…?=` value decoded first, numbers compared by value). A client of 2026-07-28 or later
//! must send the header of every declared argument it gives; an older client sends none. A call
//! with such headers to a tool the sidecar has not listed, or whose declarations are invalid,
//! cannot be checked and is refused.

use super::refusal::Refused;
use crate::mcp::{self, ToolCall};
use crate::tools::catalog::Snapshot;
use crate::tools::params::{agrees, decode};
use http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value;

const PREFIX: &str = "mcp-param-";

/// Whether any `Mcp-Param-*` header is present.
pub(super) fn any(h: &HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with(PREFIX))
}

/// Whether a `tools/call` at protocol `version` has `Mcp-Param-*` headers to check: it sends
/// some, or its version obliges it to.
pub(super) fn apply(h: &HeaderMap, version: &str) -> bool {
    any(h) || mcp::version_at_least(version, mcp::RESULT_TYPE_SINCE)
}

/// Checks the `Mcp-Param-*` headers of one `tools/call` at protocol `version` against the
/// server's tools as the sidecar listed them (when [`apply`] says there is something to check).
pub(super) fn check(
    h: &HeaderMap,
    version: &str,
    call: &ToolCall,
    tools: &Snapshot,
    id: &RawValue,
) -> Result<(), Refused> {
    let sent = any(h);
    let modern = mcp::version_at_least(version, mcp::RESULT_TYPE_SINCE);
    let refuse = |why: String| Refused::ParamMismatch {
        why,
        id: id.to_owned(),
    };
    let declared = match tools.tools.get(call.name.as_ref()) {
        Some(e) => match &e.def.params {
            Ok(d) => d.as_slice(),
            Err(why) if sent => {
                return Err(refuse(format!(
                    "the Mcp-Param headers of tool {:?} cannot be checked: {why}",
                    call.name
                )))
            }
            Err(_) => return Ok(()),
        },
        None if sent => {
            return Err(refuse(format!(
                "the Mcp-Param headers of tool {:?} cannot be checked: the sidecar has not seen \
                 it in the server's tool list yet; retry in a few seconds",
                call.name
            )))
        }
        None => return Ok(()),
    };
    for name in h.keys().filter_map(|k| k.as_str().strip_prefix(PREFIX)) {
        if !declared.iter().any(|d| d.name.eq_ignore_ascii_case(name)) {
            return Err(refuse(format!(
                "tool {:?} declares no Mcp-Param-{name} header",
                call.name
            )));
        }
    }
    if declared.is_empty() {
        return Ok(());
    }
    let args: Value = match call.arguments {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| Refused::UnreadableArguments(id.to_owned()))?,
        None => Value::Null,
    };
    for d in declared {
        let header = format!("{PREFIX}{}", d.name.to_ascii_lowercase());
        let mut values = h.get_all(header.as_str()).iter();
        let (first, second) = (values.next(), values.next());
        let value = d
            .path
            .iter()
            .try_fold(&args, |v, k| v.get(k))
            .filter(|v| !v.is_null());
        let shown = format!("Mcp-Param-{}", d.name);
        match (first, second, value) {
            (Some(_), Some(_), _) => return Err(refuse(format!("{shown} is sent twice"))),
            (None, _, None) => {}
            (None, _, Some(_)) if modern => {
                return Err(refuse(format!(
                    "{shown} is missing: the argument it mirrors is in the body"
                )))
            }
            (None, _, Some(_)) => {}
            (Some(_), _, None) => {
                return Err(refuse(format!(
                    "{shown} is sent but the argument it mirrors is not in the body"
                )))
            }
            (Some(text), _, Some(v)) => {
                let text = text
                    .to_str()
                    .ok()
                    .and_then(decode)
                    .ok_or_else(|| refuse(format!("{shown} is not a readable value")))?;
                if !agrees(d.kind, &text, v) {
                    return Err(refuse(format!("{shown} does not match the body")));
                }
            }
        }
    }
    Ok(())
}
