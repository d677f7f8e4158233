//! The audit line: one JSON object per decision, on stderr with the logs.
//!
//! Written directly (not through tracing's generic JSON formatter) because it is on every call's
//! path. It is emitted when the log filter enables target `mcp_warden::audit` at `info`, so
//! `MCP_WARDEN_LOG=info,mcp_warden::audit=off` silences it. Arguments never appear, only their
//! SHA-256. The caller appears in the clear when it is a verified subject or a gateway's identity
//! header (names, not secrets), and only as a hash when all it sent is an opaque bearer token.

use crate::logging::BatchedStderr;
use std::io::Write;
use std::time::SystemTime;

/// Everything an audit line says.
pub struct AuditLine<'a> {
    pub policy: &'a str,
    pub tool: &'a str,
    pub decision: &'a str,
    pub rule: &'a str,
    pub identity: &'a str,
    /// The grant whose rules applied (`grants[0]`), or empty.
    pub grant: &'a str,
    /// The approval id of a call that needs one (requested when refused, used when allowed),
    /// or empty.
    pub approval: &'a str,
    /// Who confirmed the call in their MCP client (`approval: {by: user}`), or empty.
    pub confirmed_by: &'a str,
    pub session: &'a str,
    pub counter: &'a str,
    pub latency_ns: u64,
    pub args_sha256: &'a str,
}

/// Whether audit lines are enabled by the log filter.
pub fn enabled() -> bool {
    tracing::enabled!(target: "mcp_warden::audit", tracing::Level::INFO)
}

/// Writes one audit line.
pub fn write(line: &AuditLine) {
    let mut out = Vec::with_capacity(384);
    encode(line, SystemTime::now(), &mut out);
    let _ = BatchedStderr::global().write_all(&out);
}

fn encode(l: &AuditLine, now: SystemTime, out: &mut Vec<u8>) {
    let field = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(&mut *out, value);
    };
    out.extend_from_slice(b"{\"timestamp\":\"");
    rfc3339(now, out);
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"target\":\"mcp_warden::audit\",\"message\":\"decision\"",
    );
    field(out, "policy", l.policy);
    // A tool name is whatever the client sent (up to the body limit): long ones are cut, with
    // a hash of the whole so lines still tell names apart.
    match short_tool(l.tool) {
        Some(cut) => field(out, "tool", &cut),
        None => field(out, "tool", l.tool),
    }
    field(out, "decision", l.decision);
    field(out, "rule", l.rule);
    field(out, "identity", l.identity);
    if !l.grant.is_empty() {
        field(out, "grant", l.grant);
    }
    if !l.approval.is_empty() {
        field(out, "approval_id", l.approval);
    }
    if !l.confirmed_by.is_empty() {
        field(out, "confirmed_by", l.confirmed_by);
    }
    field(out, "session", l.session);
    field(out, "counter", l.counter);
    let _ = write!(out, ",\"latency_ns\":{}", l.latency_ns);
    field(out, "args_sha256", l.args_sha256);
    out.extend_from_slice(b"}\n");
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
/// Longest tool name written whole into an audit line.
const MAX_TOOL: usize = 128;

/// `None` when the name fits; else its first bytes and a hash of the whole.
fn short_tool(tool: &str) -> Option<String> {
    if tool.len() <= MAX_TOOL {
        return None;
    }
    let mut end = MAX_TOOL;
    while !tool.is_char_boundary(end) {
        end -= 1;
    }
    let hash = crate::policy::sha256_hex(tool.as_bytes());
    Some(format!(
        "{}…[{} bytes, sha256 {}]",
        &tool[..end],
        tool.len(),
        &hash[..16]
    ))
}

/// RFC 3339 in UTC with microseconds, as the log lines' timestamps.
fn rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let _ = write!(out, "{ts:.6}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    #[test]
    fn long_tool_names_are_cut_with_a_hash() {
        assert_eq!(short_tool("run_cell"), None);
        let long = "é".repeat(100_000);
        let cut = short_tool(&long).unwrap();
        assert!(cut.len() < 220, "{}", cut.len());
        assert!(cut.contains("200000 bytes, sha256 "), "{cut}");
        assert_ne!(cut, short_tool(&"é".repeat(100_001)).unwrap());
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field_escaped() {
        let line = AuditLine {
            policy: "ns/p",
            tool: "evil\"tool\n",
            decision: "deny",
            rule: "default",
            identity: "anonymous",
            grant: "",
            approval: "",
            confirmed_by: "",
            session: "",
            counter: "",
            latency_ns: 412,
            args_sha256: "ab",
        };
        let mut out = Vec::new();
        encode(
            &line,
            UNIX_EPOCH + Duration::from_micros(1_795_312_496_123_456),
            &mut out,
        );
        assert_eq!(*out.last().unwrap(), b'\n');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["tool"], "evil\"tool\n");
        assert_eq!(v["latency_ns"], 412);
        assert_eq!(v["target"], "mcp_warden::audit");
        assert_eq!(v["timestamp"], "2026-11-22T01:54:56.123456Z");
        assert!(v.get("grant").is_none() && v.get("approval_id").is_none());

        let with = AuditLine {
            grant: "grants[0]",
            approval: "a1b2",
            confirmed_by: "sa:tenant-a/agent",
            decision: "approval_required",
            ..line
        };
        let mut out = Vec::new();
        encode(&with, UNIX_EPOCH, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                v["grant"].as_str(),
                v["approval_id"].as_str(),
                v["decision"].as_str()
            ),
            (Some("grants[0]"), Some("a1b2"), Some("approval_required"))
        );
        assert_eq!(v["confirmed_by"], "sa:tenant-a/agent");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&{
                let mut o = Vec::new();
                encode(&line, UNIX_EPOCH, &mut o);
                o
            })
            .unwrap()
            .get("confirmed_by")
            .is_none(),
            "only a call the user confirmed names who did"
        );
    }

    #[test]
    fn dates_are_right_across_leap_years() {
        let mut out = Vec::new();
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut out); // 2000-02-29
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
        let mut out = Vec::new();
        rfc3339(UNIX_EPOCH, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
