//! `mcp-warden check FILE…`: validates policy files and McpPolicy manifests offline, and with
//! `--explain` shows what a policy would decide for one call and why.

use super::block_on;
use crate::crd::manifest::{read_document, Document};
use crate::engine::{Call, Engine, EngineOptions, Outcome, Seen};
use crate::policy::{self, source, Policy};
use crate::tools::client::Listing;
use crate::tools::{report, ToolDef};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A call to explain against every valid policy.
#[derive(Debug, Clone)]
pub struct Explain {
    pub tool: String,
    pub args: Value,
    /// The caller's identity (`--identity`); without it the call is anonymous.
    pub identity: Option<String>,
    pub session: Option<String>,
    /// Make the call this many times (at one instant) and explain the last: shows limits acting.
    pub calls: u32,
}

/// Checks every file, writing a report to `out`. Returns whether everything was valid (and, with
/// a server's `listing`, whether every policy matches its tools).
pub fn check_files(
    paths: &[impl AsRef<Path>],
    explain: Option<&Explain>,
    listing: Option<&Listing>,
    out: &mut String,
) -> bool {
    let tools: Option<Vec<ToolDef>> =
        listing.map(|l| l.tools.iter().filter_map(ToolDef::read).collect());
    let mut ok = true;
    for path in paths {
        let path = path.as_ref();
        let shown = path.display();
        let docs = match file_documents(path) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(out, "{shown}: {e}");
                ok = false;
                continue;
            }
        };
        if docs.is_empty() {
            let _ = writeln!(out, "{shown}: no documents");
            ok = false;
        }
        for (i, doc) in docs.iter().enumerate() {
            let at = format!("{shown} (document {})", i + 1);
            match read_document(doc) {
                Document::Invalid(errs) => {
                    ok = false;
                    for e in errs.0 {
                        let _ = writeln!(out, "{at}: {e}");
                    }
                }
                Document::Skipped { kind } => {
                    let _ = writeln!(out, "{at}: skipped ({kind} is not an McpPolicy)");
                }
                Document::Policy { label, policy } => {
                    let _ = writeln!(out, "{at}: ok: {}", summary(&label, &policy));
                    for w in warnings(&policy) {
                        let _ = writeln!(out, "{at}: warning: {w}");
                    }
                    for b in budgets(&policy) {
                        let _ = writeln!(out, "{at}: budget: {b}");
                    }
                    if let Some(tools) = &tools {
                        let r = report::report(&policy, tools);
                        for line in r.to_string().lines() {
                            let _ = writeln!(out, "{at}: server: {line}");
                        }
                        if r.clean() {
                            let _ = writeln!(
                                out,
                                "{at}: server: every rule names a tool the server offers"
                            );
                        } else {
                            ok = false;
                        }
                    }
                    if let Some(x) = explain {
                        explain_call(&policy, x, tools.as_deref(), out);
                    }
                }
            }
        }
    }
    ok
}

/// How each counter holds across the policy's replicas (DESIGN §15): one budget counted by an
/// owner sidecar, the share a sidecar allows alone when it cannot ask the owner, or (scope
/// `pod`) a budget per replica.
pub fn budgets(p: &Policy) -> Vec<String> {
    use crate::policy::Scope;
    p.counters
        .iter()
        .map(|c| {
            let head = format!(
                "counter {:?} allows {} calls per {}",
                c.name, c.max, c.window.text
            );
            let whom = match c.scope {
                Scope::Pod => {
                    return format!(
                        "{head} on each pod (scope pod): with 3 replicas the policy allows {} \
                         calls per {}",
                        u64::from(c.max.get()) * 3,
                        c.window.text
                    )
                }
                Scope::Policy => "for all callers together",
                Scope::Grant => "for each caller",
                Scope::Session => "for each session",
            };
            let share = |n: u32| match c.max.get() / n {
                0 => "none".to_owned(),
                k => k.to_string(),
            };
            let leased = match c.max.get() >= crate::sidecar::peers::LEASE_MIN_MAX {
                true => " (leased to the other sidecars a few counts at a time)",
                false => "",
            };
            format!(
                "{head} {whom}, across all the policy's pods (each key is counted by one \
                 sidecar, its owner{leased}); a sidecar that cannot ask the owner allows at most \
                 max / replicas on its own ({} with 2 replicas, {} with 3)",
                share(2),
                share(3)
            )
        })
        .collect()
}

/// What a valid policy does less than it may seem to: per-caller and per-session counters that a
/// caller can escape by changing what identifies it.
pub fn warnings(p: &Policy) -> Vec<String> {
    use crate::policy::{Identity, Scope};
    let mut out = Vec::new();
    for c in &p.counters {
        match (c.scope, &p.identity.source) {
            (Scope::Session, _) => out.push(format!(
                "counter {:?} has scope session: it counts per session id the server issued \
                 (calls with another id count per caller), so it limits nothing on a server \
                 that issues no sessions, and a caller that opens new sessions gets new counters",
                c.name
            )),
            (Scope::Grant, Identity::Bearer) => out.push(format!(
                "counter {:?} has scope grant with the default identity (a hash of the bearer \
                 token): a caller that sends a fresh token gets a fresh counter, so it is not a \
                 security limit unless tokens are verified before the sidecar",
                c.name
            )),
            (Scope::Grant, Identity::Header(h)) => out.push(format!(
                "counter {:?} has scope grant keyed on the {h:?} header: trust it only when an \
                 authenticating gateway in front of the sidecar sets that header",
                c.name
            )),
            _ => {}
        }
    }
    out
}

/// One line on what was listed: `server http://…: 4 tools (streamable-http, 2025-06-18)`.
pub fn listing_summary(l: &Listing, url: &http::Uri) -> String {
    let name = l
        .server_info
        .as_ref()
        .and_then(|i| i.get("name"))
        .and_then(serde_json::Value::as_str)
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    format!(
        "server {url}{name}: {} tool{} ({}, {})\n",
        l.tools.len(),
        plural(l.tools.len()),
        l.transport,
        l.protocol_version
    )
}

/// The documents of a policy file or manifest (JSON, or YAML with several documents).
fn file_documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    source::parse_documents(&text).map_err(|e| e.message)
}

/// The one valid policy a file holds (for `pin`).
pub fn load_one(path: &Path) -> anyhow::Result<Policy> {
    let docs = file_documents(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut found = Vec::new();
    for doc in &docs {
        match read_document(doc) {
            Document::Policy { policy, .. } => found.push(*policy),
            Document::Invalid(errs) => anyhow::bail!("{}: {errs}", path.display()),
            Document::Skipped { .. } => {}
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => anyhow::bail!("{} holds {n} policies; pin reads one", path.display()),
    }
}

/// A `pins:` block for a server's tools — with a policy, only the tools it lets agents call.
pub fn pins_block(l: &Listing, policy: Option<&Policy>, url: &http::Uri) -> String {
    let mut defs: Vec<ToolDef> = l.tools.iter().filter_map(ToolDef::read).collect();
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = format!(
        "# mcp-warden pin --server {url}: {} of {} tools{}\npins:\n",
        defs.iter()
            .filter(|d| policy.is_none_or(|p| p.listable(&d.name, None, Some(d.hints))))
            .count(),
        defs.len(),
        if policy.is_some() {
            " (those the policy lets agents call)"
        } else {
            ""
        }
    );
    for d in defs {
        if policy.is_none_or(|p| p.listable(&d.name, None, Some(d.hints))) {
            let name = serde_json::to_string(&d.name).expect("a string serialises");
            let _ = writeln!(out, "  {name}: \"{}\"", d.hash);
        }
    }
    out
}

fn summary(label: &str, p: &Policy) -> String {
    let default = match p.default {
        policy::DefaultDecision::Allow => "allow",
        policy::DefaultDecision::Deny => "deny",
    };
    let rules = p.tools.rules.len();
    let mut s = format!(
        "{label}: default {default}, {rules} tool rule{}, {} counter{}, {} hidden pattern{}",
        plural(rules),
        p.counters.len(),
        plural(p.counters.len()),
        p.hide.len(),
        plural(p.hide.len())
    );
    if !p.grants.is_empty() {
        let _ = write!(s, ", {} grant{}", p.grants.len(), plural(p.grants.len()));
    }
    if p.categories.in_use() {
        let names: Vec<&str> = p.categories.named().iter().map(|c| c.name()).collect();
        let _ = write!(s, ", categories {}", names.join(", "));
    }
    if !p.pins.is_empty() {
        let _ = write!(s, ", {} pin{}", p.pins.len(), plural(p.pins.len()));
    }
    if p.pinning == policy::Pinning::FirstSeen {
        s.push_str(", pinning firstSeen");
    }
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Writes what the policy decides for the call, on fresh counters; with a server's tools, as
/// the sidecar would decide having listed them.
pub fn explain_call(policy: &Policy, x: &Explain, tools: Option<&[ToolDef]>, out: &mut String) {
    let engine = Engine::new(policy.clone(), None, EngineOptions::default());
    let seen = tools
        .and_then(|t| t.iter().find(|d| d.name == x.tool))
        .map(|d| Seen {
            hints: d.hints,
            hash: &d.hash,
            first: &d.hash,
        });
    // Only a named caller can match a grant; an anonymous one gets the base rules.
    let grant = x.identity.as_deref().and_then(|id| policy.grant_for(id));
    let call = Call {
        tool: &x.tool,
        args: &x.args,
        caller: x.identity.as_deref().unwrap_or("anonymous"),
        grant,
        session: x.session.as_deref(),
        approved: false,
        cloak: None,
        seen,
    };
    let calls = x.calls.max(1);
    let allowed = (1..calls)
        .filter(|_| engine.decide(&call, 0).outcome == Outcome::Allow)
        .count();
    let d = engine.decide(&call, 0);
    let _ = writeln!(out, "  call:     {} {}", x.tool, x.args);
    if calls > 1 {
        let _ = writeln!(
            out,
            "  calls:    {calls} at one instant, {allowed} of the first {} allowed",
            calls - 1
        );
    }
    write_caller(out, policy, x, d.grant);
    let _ = writeln!(out, "  decision: {}", d.outcome.as_str());
    let _ = writeln!(out, "  rule:     {}", d.rule);
    if !d.reason.is_empty() {
        let _ = writeln!(out, "  reason:   {}", d.reason);
    }
    if let Some(hit) = &d.limit {
        let _ = writeln!(out, "  retry in: {:.1} s", hit.retry_after.as_secs_f64());
    }
    if d.outcome == Outcome::Allow {
        write_counts(out, policy, &x.tool, grant);
    }
    let listable = policy.listable(&x.tool, grant, seen.map(|s| s.hints));
    let _ = writeln!(
        out,
        "  listed:   {}",
        if listable {
            "yes"
        } else {
            "no (never callable)"
        }
    );
}

/// Who the call is from, and which grant's rules apply.
fn write_caller(out: &mut String, policy: &Policy, x: &Explain, grant: Option<&str>) {
    let who = x.identity.as_deref().unwrap_or("anonymous (no --identity)");
    let _ = match grant {
        Some(g) => writeln!(out, "  caller:   {who}, under {g}"),
        None if policy.grants.is_empty() => writeln!(out, "  caller:   {who}"),
        None => writeln!(
            out,
            "  caller:   {who}, no grant names it: the base rules apply"
        ),
    };
}

/// The counters an allowed call takes, and where each is declared.
fn write_counts(out: &mut String, policy: &Policy, tool: &str, grant: Option<usize>) {
    let rule = policy
        .rule_for(tool, grant)
        .unwrap_or_else(|| policy.default_rule_for(grant));
    for l in &rule.limits {
        let c = &policy.counters[l.counter];
        let _ = writeln!(
            out,
            "  counts:   {} ({} per {}, scope {}, declared at {})",
            c.name,
            c.max,
            c.window.text,
            c.scope.as_str(),
            l.rule
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_a_caller_can_escape_are_warned_about() {
        let policy = |identity: Value, scope: &str| {
            let mut doc = json!({"tools": {"t": {"limits": [
                {"counter": "c", "window": "minute", "max": 1, "scope": scope}]}}});
            if !identity.is_null() {
                doc["identity"] = identity;
            }
            match read_document(&doc) {
                Document::Policy { policy, .. } => warnings(&policy),
                other => panic!("{other:?}"),
            }
        };
        let w = policy(Value::Null, "session");
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("scope session") && w[0].contains("issues no sessions"),
            "{w:?}"
        );
        let w = policy(Value::Null, "grant");
        assert!(w[0].contains("fresh token"), "{w:?}");
        let w = policy(json!({"header": "x-agent"}), "grant");
        assert!(w[0].contains("authenticating gateway"), "{w:?}");
        assert!(policy(Value::Null, "pod").is_empty());
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files (JSON or YAML) or McpPolicy manifests (multi-document YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Explain what each valid policy decides for a call to this tool.
    #[arg(long, value_name = "TOOL")]
    pub explain: Option<String>,
    /// The call's arguments, as a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}", requires = "explain")]
    pub args: String,
    /// The caller's identity (a ServiceAccount's `system:serviceaccount:NS:NAME`, a JWT subject or
    /// a gateway header's value): picks the grant that applies and keys `scope: grant` counters.
    /// Without it the call is anonymous and gets the base rules.
    #[arg(long, requires = "explain")]
    pub identity: Option<String>,
    /// Session id for `scope: session` counters.
    #[arg(long, requires = "explain")]
    pub session: Option<String>,
    /// Make the call N times at one instant and explain the last (shows limits acting).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "explain")]
    pub calls: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A live MCP server to read the tools of.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// An MCP server's URL (streamable HTTP, e.g. http://127.0.0.1:8888/mcp; https works too):
    /// its tools are listed and each policy is checked against them — rule names and globs that
    /// match no tool, conditions on arguments a tool does not take, changed pins (each makes the
    /// exit code non-zero) and tools only `default: allow` lets through.
    #[arg(long, value_name = "URL")]
    pub server: Option<http::Uri>,
    /// Where a legacy (HTTP+SSE) server's event stream is, when the URL takes no POSTs.
    #[arg(long, value_name = "PATH", default_value = "/sse", requires = "server")]
    pub sse_path: String,
}

impl ServerArgs {
    /// The server's tools, when a server is named.
    pub fn tools(&self) -> anyhow::Result<Option<crate::tools::client::Listing>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let lister = crate::tools::client::Lister::https(url.clone(), &self.sse_path);
        let listing = block_on(async { Ok(lister.list().await?) })
            .with_context(|| format!("cannot list the tools of {url}"))?;
        Ok(Some(listing))
    }
}

/// Runs `check`; the process exit code is 0 only when every document is valid.
pub fn run(a: &CheckArgs) -> anyhow::Result<bool> {
    let explain = match &a.explain {
        None => None,
        Some(tool) => {
            let args: serde_json::Value =
                serde_json::from_str(&a.args).context("--args is not valid JSON")?;
            if !args.is_object() {
                bail!("--args must be a JSON object, like the arguments of a tools/call");
            }
            Some(Explain {
                tool: tool.clone(),
                args,
                identity: a.identity.clone(),
                session: a.session.clone(),
                calls: a.calls,
            })
        }
    };
    let listing = a.server.tools()?;
    let mut out = String::new();
    if let (Some(l), Some(url)) = (&listing, &a.server.server) {
        out.push_str(&listing_summary(l, url));
    }
    let ok = check_files(&a.files, explain.as_ref(), listing.as_ref(), &mut out);
    print!("{out}");
    Ok(ok)
}
