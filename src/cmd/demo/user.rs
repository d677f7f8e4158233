//! The demo's step 3b: a call the user at the MCP client confirms in their own client
//! (`approval: {by: user}`), as a 2026-07-28 client sees it: the sidecar answers with
//! `input_required` and a sealed `requestState`, the client shows its user the form, and repeats
//! the call with the answer; the server never sees the sidecar's question. The same answer sent
//! again runs nothing.

use super::{describe, Demo};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// The rule the demo adds to the example policy.
pub const RULE: &str = "  run_python_file:\n    approval: {by: user}\n";

impl Demo {
    /// Sends `tools/call run_python_file` as a 2026-07-28 client that can ask its user.
    async fn call_v26(&mut self, params: Value) -> anyhow::Result<Value> {
        let headers = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "run_python_file"),
        ];
        let (_, _, v) = self.c.send_as(&headers, "tools/call", params).await?;
        Ok(v)
    }

    /// Step 3b: the user at the client confirms the call, which then runs once.
    pub(super) async fn user_confirms(&mut self) -> anyhow::Result<()> {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "demo", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}
        });
        let mut params = json!({
            "name": "run_python_file", "arguments": {"file_path": "report.py"}, "_meta": meta
        });
        let asked = self.call_v26(params.clone()).await?;
        let r = &asked["result"];
        let (key, question) = r["inputRequests"]
            .as_object()
            .and_then(|m| m.iter().next())
            .ok_or_else(|| anyhow::anyhow!("the sidecar did not ask: {asked}"))?;
        let message = question["params"]["message"].as_str().unwrap_or_default();
        let state = r["requestState"].as_str().unwrap_or_default();
        let _ = writeln!(
            self.out,
            "3b. run_python_file {{\"file_path\": \"report.py\"}}: the user at the client confirms it \
             (approval: {{by: user}})\n   \
             the sidecar answers resultType {:?} with a sealed requestState ({} bytes); \
             the client shows its user:",
            r["resultType"].as_str().unwrap_or_default(),
            state.len()
        );
        for line in message.lines() {
            let _ = writeln!(self.out, "     | {line}");
        }
        params["requestState"] = json!(state);
        params["inputResponses"] =
            json!({key.as_str(): {"action": "accept", "content": {"confirm": true}}});
        let ran = self.call_v26(params.clone()).await?;
        let _ = writeln!(
            self.out,
            "   the user accepts; the client repeats the call with the answer: {}",
            describe(&ran)
        );
        let again = self.call_v26(params).await?;
        let _ = writeln!(
            self.out,
            "   the same answer sent again: {}\n",
            describe(&again).split(':').next().unwrap_or_default()
        );
        Ok(())
    }
}
