//! `mcp-warden approvals list` and `mcp-warden approve|reject NAME` (also run as the kubectl
//! plugin `kubectl mcp-warden …`): in a cluster they read and decide McpApprovals with the
//! caller's kubeconfig, so the API server and the webhooks see who decided; with `--admin URL`
//! they talk to one sidecar's admin API directly (no cluster).

use super::block_on;
use crate::approval::Report;
use crate::crd::approval::{ApprovalDecision, McpApproval};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where approvals are read and decided.
pub enum Target<'a> {
    /// The cluster of the kubeconfig: a namespace, or all of them.
    Cluster {
        namespace: Option<&'a str>,
        all: bool,
    },
    /// One sidecar's admin API, with its token file.
    Admin { url: &'a str, token_file: &'a Path },
}

fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Arguments shown in a table: cut to fit a line.
fn shown(args: Option<&str>) -> String {
    match args {
        None => "(over 16 KiB; see argumentsHash)".into(),
        Some(a) if a.chars().count() > 60 => format!("{}…", a.chars().take(59).collect::<String>()),
        Some(a) => a.to_owned(),
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0; rows.first().map_or(0, Vec::len)];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// The McpApprovals as a table, pending first.
pub fn approvals_table(items: &[McpApproval], now: i64, with_namespace: bool) -> String {
    let mut items: Vec<&McpApproval> = items.iter().collect();
    let phase = |a: &McpApproval| {
        a.status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("Pending".to_owned(), |p| format!("{p:?}"))
    };
    items.sort_by_key(|a| (phase(a) != "Pending", a.spec.requested_at.0));
    let head = [
        "NAMESPACE",
        "NAME",
        "TOOL",
        "IDENTITY",
        "PHASE",
        "AGE",
        "ARGUMENTS",
    ];
    let skip = usize::from(!with_namespace);
    let mut rows = vec![head[skip..]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for a in items {
        let mut row = Vec::new();
        if with_namespace {
            row.push(a.namespace().unwrap_or_default());
        }
        row.extend([
            a.name_any(),
            a.spec.tool.clone(),
            a.spec.identity.clone(),
            phase(a),
            age(now - a.spec.requested_at.0.as_second()),
            shown(a.spec.arguments.as_deref()),
        ]);
        rows.push(row);
    }
    if rows.len() == 1 {
        return "no McpApprovals\n".into();
    }
    table(&rows)
}

/// A sidecar's pending requests as a table.
pub fn report_table(r: &Report, now: u64) -> String {
    if r.pending.is_empty() {
        return "no pending requests\n".into();
    }
    let mut rows = vec![["ID", "TOOL", "IDENTITY", "AGE", "ARGUMENTS"]
        .map(String::from)
        .to_vec()];
    for p in &r.pending {
        rows.push(vec![
            p.id[..p.id.len().min(crate::approval::MIN_ID_PREFIX)].to_owned(),
            p.tool.clone(),
            p.identity.clone(),
            age(now as i64 - p.requested_at as i64),
            shown(p.arguments.as_deref()),
        ]);
    }
    table(&rows)
}

async fn admin_request(
    url: &str,
    token_file: &Path,
    method: http::Method,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Bytes> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the admin token {}", token_file.display()))?;
    let uri: http::Uri = format!("{}/approvals", url.trim_end_matches('/'))
        .parse()
        .context("--admin is not a URL like http://127.0.0.1:9481")?;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let res = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = res.status();
    let bytes = res.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the admin API answered {status}: {why}");
    }
    Ok(bytes)
}

async fn client_and_namespace(namespace: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no cluster (KUBECONFIG or in-cluster): {e}; without a cluster use --admin URL"
        )
    })?;
    let ns = namespace
        .map(String::from)
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, ns))
}

/// `approvals list`.
pub async fn list(target: Target<'_>) -> anyhow::Result<String> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    match target {
        Target::Admin { url, token_file } => {
            let bytes = admin_request(url, token_file, http::Method::GET, None).await?;
            let r: Report = serde_json::from_slice(&bytes).context("unreadable admin answer")?;
            Ok(report_table(&r, now.max(0) as u64))
        }
        Target::Cluster { namespace, all } => {
            let (client, ns) = client_and_namespace(namespace).await?;
            let api: Api<McpApproval> = if all {
                Api::all(client)
            } else {
                Api::namespaced(client, &ns)
            };
            let items = api.list(&ListParams::default()).await?.items;
            Ok(approvals_table(&items, now, all))
        }
    }
}

/// `approve` / `reject`.
pub async fn decide(target: Target<'_>, name: &str, approve: bool) -> anyhow::Result<String> {
    match target {
        Target::Admin { url, token_file } => {
            let body = json!({"id": name, "decision": if approve { "approve" } else { "reject" }});
            let bytes = admin_request(url, token_file, http::Method::POST, Some(body)).await?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            Ok(match approve {
                true => format!(
                    "approved {} for {} ({} use(s) within {} s)\n",
                    v["tool"].as_str().unwrap_or_default(),
                    v["identity"].as_str().unwrap_or_default(),
                    v["uses"],
                    v["ttl_seconds"]
                ),
                false => format!(
                    "rejected {} for {}\n",
                    v["tool"].as_str().unwrap_or_default(),
                    v["identity"].as_str().unwrap_or_default()
                ),
            })
        }
        Target::Cluster { namespace, .. } => {
            let (client, ns) = client_and_namespace(namespace).await?;
            let api: Api<McpApproval> = Api::namespaced(client, &ns);
            let decision = if approve {
                ApprovalDecision::Approved
            } else {
                ApprovalDecision::Denied
            };
            let a = api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"decision": decision}})),
                )
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
                    e => e.into(),
                })?;
            Ok(format!(
                "mcpapproval/{} {} by {}: {} for {} on pod {}\n",
                a.name_any(),
                if approve { "approved" } else { "denied" },
                a.spec.decided_by.as_deref().unwrap_or("?"),
                a.spec.tool,
                a.spec.identity,
                a.spec.pod
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::Pending;

    #[test]
    fn tables_show_what_a_person_needs_to_decide() {
        let r = Report {
            pending: vec![Pending {
                id: "f".repeat(64),
                policy: "demo".into(),
                tool: "clear_session".into(),
                arguments: Some(format!("{{\"session_id\":\"{}\"}}", "x".repeat(80))),
                arguments_sha256: String::new(),
                identity: "system:serviceaccount:agents:bot".into(),
                requested_at: 1_000,
                uses: 1,
                ttl_seconds: 3600,
                tool_label: String::new(),
            }],
            used: vec![],
        };
        let t = report_table(&r, 1_300);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID "));
        assert!(
            lines[1].starts_with(&format!("{} ", "f".repeat(12))),
            "ids are shown by prefix"
        );
        assert!(lines[1].contains("clear_session") && lines[1].contains("5m"));
        assert!(
            lines[1].ends_with('…'),
            "long arguments are cut: {}",
            lines[1]
        );
        assert_eq!(report_table(&Report::default(), 0), "no pending requests\n");
    }
}

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List McpApprovals, pending first (or a sidecar's pending requests with --admin).
    List(ListArgs),
}

/// Where approvals live: the kubeconfig's cluster, or one sidecar's admin API.
#[derive(Debug, Args)]
pub struct Where {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A sidecar's admin API instead of a cluster, e.g. http://127.0.0.1:9481.
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    pub admin: Option<String>,
    /// The file holding the sidecar's admin token (its --admin-token-file).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub admin_token_file: Option<PathBuf>,
}

impl Where {
    fn target(&self, all: bool) -> Target<'_> {
        match (&self.admin, &self.admin_token_file) {
            (Some(url), Some(token_file)) => Target::Admin { url, token_file },
            _ => Target::Cluster {
                namespace: self.namespace.as_deref(),
                all,
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: Where,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "admin"])]
    pub all_namespaces: bool,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The McpApproval's name (with --admin: the request's approval id).
    pub name: String,
    #[command(flatten)]
    pub at: Where,
}

/// Runs `approvals list`.
pub fn run_approvals(a: &ApprovalsArgs) -> anyhow::Result<bool> {
    let ApprovalsCommand::List(l) = &a.command;
    print!("{}", block_on(list(l.at.target(l.all_namespaces)))?);
    Ok(true)
}

/// Runs `approve` (`approve: true`) or `reject`.
pub fn run_decide(a: &DecideArgs, approve: bool) -> anyhow::Result<bool> {
    print!(
        "{}",
        block_on(decide(a.at.target(false), &a.name, approve))?
    );
    Ok(true)
}
