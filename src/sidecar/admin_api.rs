//! The sidecar's admin API, on the admin port beside `/metrics`:
//!
//! - `GET /approvals`: the pending requests (with their arguments) and the uses spent of every
//!   approval held ([`approvals::Report`]);
//! - `GET /tools`: the server's tools as the sidecar last listed them (hash, first-seen hash,
//!   categories, argument names) and the loaded policy checked against them
//!   ([`crate::tools::report`]);
//! - `POST /approvals` with `{"id": ID, "decision": "approve"|"reject"}`: decides a pending
//!   request — without a cluster only (`--admin-token-file`); in one, people decide McpApprovals
//!   and the controller renders them, and the controller's token can only read.
//!
//! Arguments are not for everyone who can reach the pod, so both need a bearer token:
//! - `--admin-keys FILE` (in a cluster; the controller renders it): a ServiceAccount token for
//!   audience [`ADMIN_AUDIENCE`] whose subject is the file's `subject` (the controller's
//!   ServiceAccount), verified with the file's issuer and keys;
//! - `--admin-token-file FILE` (without a cluster): the file's token.
//!
//! With neither, the API answers 403. A missing or wrong token gets 401, as on the MCP port.

use super::approvals::NotPending;
use super::caller::unix_now;
use super::State;
use crate::identity::Verifier;
use crate::policy::sha256_hex;
use crate::serve::{json, Body};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The audience of the tokens the admin API accepts: never the API server's own, so a token
/// sent to a sidecar is useless against the API server.
pub const ADMIN_AUDIENCE: &str = "mcp-warden-admin";

/// Largest decision body read.
const MAX_DECISION_BYTES: usize = 4096;

/// How callers of the admin API are authenticated.
pub enum AdminAuth {
    Off,
    /// A static token, read from this file on every request (so it can be rotated).
    TokenFile(PathBuf),
    /// ServiceAccount tokens for [`ADMIN_AUDIENCE`], verified with this file's keys.
    Keys {
        path: PathBuf,
        /// The verifier for the file as last read, by the file's hash.
        cached: Mutex<Option<(String, Arc<AdminKeys>)>>,
    },
}

/// The admin key file: the issuer's JSON Web Key Set, with the issuer and the one subject
/// allowed.
pub struct AdminKeys {
    verifier: Verifier,
    subject: String,
}

#[derive(Deserialize)]
struct AdminKeysFile {
    issuer: String,
    subject: String,
}

impl AdminAuth {
    pub fn new(token_file: Option<PathBuf>, keys: Option<PathBuf>) -> AdminAuth {
        match (keys, token_file) {
            (Some(path), _) => AdminAuth::Keys {
                path,
                cached: Mutex::default(),
            },
            (None, Some(file)) => AdminAuth::TokenFile(file),
            (None, None) => AdminAuth::Off,
        }
    }

    fn keys(
        path: &std::path::Path,
        cached: &Mutex<Option<(String, Arc<AdminKeys>)>>,
    ) -> Result<Arc<AdminKeys>, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("no admin keys ({}): {e}", path.display()))?;
        let hash = sha256_hex(&bytes);
        let mut c = cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((h, k)) = &*c {
            if *h == hash {
                return Ok(k.clone());
            }
        }
        let file: AdminKeysFile = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the admin keys are not {{issuer, subject, keys}}: {e}"))?;
        let verifier = Verifier::new(&file.issuer, &[ADMIN_AUDIENCE.to_owned()], &bytes)
            .map_err(|e| format!("the admin keys: {e}"))?;
        let keys = Arc::new(AdminKeys {
            verifier,
            subject: file.subject,
        });
        *c = Some((hash, keys.clone()));
        Ok(keys)
    }

    /// Who `token` is, if it may use the admin API; else why not.
    pub fn check(&self, token: Option<&str>) -> Result<String, Denied> {
        let unauthorized = |why: String| Denied(StatusCode::UNAUTHORIZED, why);
        match self {
            AdminAuth::Off => Err(Denied(
                StatusCode::FORBIDDEN,
                "the admin API is off: start the sidecar with --admin-keys (in a cluster) or \
                 --admin-token-file"
                    .into(),
            )),
            AdminAuth::TokenFile(file) => {
                let want = std::fs::read_to_string(file).map_err(|e| {
                    Denied(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot read --admin-token-file {}: {e}", file.display()),
                    )
                })?;
                let want = want.trim();
                let token = token.ok_or_else(|| unauthorized("no bearer token".into()))?;
                // Compared as digests: equal length, no early exit on a matching prefix.
                if want.is_empty() || sha256_hex(want.as_bytes()) != sha256_hex(token.as_bytes()) {
                    return Err(unauthorized("the token is not the admin token".into()));
                }
                Ok("admin-token".into())
            }
            AdminAuth::Keys { path, cached } => {
                let keys = Self::keys(path, cached)
                    .map_err(|why| Denied(StatusCode::SERVICE_UNAVAILABLE, why))?;
                let token = token.ok_or_else(|| unauthorized("no bearer token".into()))?;
                let v = keys
                    .verifier
                    .verify(token)
                    .map_err(|e| unauthorized(e.to_string()))?;
                if *v.subject != *keys.subject {
                    return Err(Denied(
                        StatusCode::FORBIDDEN,
                        format!("{} may not use the admin API", v.subject),
                    ));
                }
                Ok(v.subject.to_string())
            }
        }
    }
}

/// A refusal of the admin API: the status and why.
#[derive(Debug)]
pub struct Denied(pub StatusCode, pub String);

fn error(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = json(
        status,
        serde_json::to_vec(&json!({ "error": why })).expect("a JSON value serialises"),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"mcp-warden-admin\""),
        );
    }
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    id: String,
    decision: Decision,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Decision {
    Approve,
    Reject,
}

/// Whether `path` is the admin API's.
pub fn handles(path: &str) -> bool {
    path == "/approvals" || path == "/tools"
}

/// Answers one admin API request.
pub async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let token = match super::caller::bearer(req.headers()) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, "one Authorization header at most"),
    };
    let who = match st.admin.check(token) {
        Ok(who) => who,
        Err(Denied(status, why)) => {
            tracing::warn!(%why, "admin API request refused");
            return error(status, &why);
        }
    };
    if req.uri().path() == "/tools" {
        return match *req.method() {
            Method::GET => tools(&st),
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET"),
        };
    }
    match *req.method() {
        Method::GET => {
            let report = st.approvals.report(unix_now());
            json(
                StatusCode::OK,
                serde_json::to_vec(&report).expect("a report serialises"),
            )
        }
        // In a cluster, people decide McpApprovals (where RBAC and the webhooks apply); the
        // controller's token only reads.
        Method::POST if matches!(st.admin, AdminAuth::Keys { .. }) => error(
            StatusCode::FORBIDDEN,
            "in a cluster, decide the McpApproval: kubectl mcp-warden approve NAME",
        ),
        Method::POST => {
            let body = match Limited::new(req.into_body(), MAX_DECISION_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!(
                            "cannot read the decision (limit {MAX_DECISION_BYTES} bytes): {e}"
                        ),
                    )
                }
            };
            let d: DecisionBody = match serde_json::from_slice(&body) {
                Ok(d) => d,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("the body must be {{\"id\": ID, \"decision\": \"approve\"|\"reject\"}}: {e}"),
                    )
                }
            };
            decide(&st, &d, &who)
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"),
    }
}

/// `GET /tools`: what the sidecar knows of the server's tools, and the policy against them.
fn tools(st: &State) -> Response<Body> {
    use crate::tools::catalog::Cloak;
    let snapshot = st.tools.snapshot();
    let policy = st.policy.load_full();
    let entries = snapshot.sorted();
    let defs: Vec<crate::tools::ToolDef> = entries.iter().map(|e| e.def.clone()).collect();
    let tools: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).expect("an entry serialises");
            let cloak = snapshot.cloak(&e.def.name);
            v["changed"] = json!(e.def.hash != e.first_hash || cloak == Some(Cloak::Cloaked));
            if let Some(c) = cloak {
                v["cloak"] = json!(c);
            }
            v
        })
        .collect();
    let report = match (&policy, snapshot.listed_at) {
        (Some(p), Some(_)) => Some(crate::tools::report::report(p.engine.policy(), &defs)),
        _ => None,
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&json!({
            "policy": policy.as_ref().map(|p| p.label.as_str()),
            "listedAt": snapshot.listed_at,
            "error": snapshot.error,
            "dropped": snapshot.dropped,
            "tools": tools,
            // Tools clients were shown that the sidecar's own listing never had.
            "unlistedCloaks": snapshot.cloaks.keys().filter(|n| !snapshot.tools.contains_key(*n)).collect::<std::collections::BTreeSet<_>>(),
            "report": report,
        }))
        .expect("a JSON value serialises"),
    )
}

fn decide(st: &State, d: &DecisionBody, who: &str) -> Response<Body> {
    let approve = d.decision == Decision::Approve;
    match st.approvals.decide(&d.id, approve, unix_now()) {
        Ok(p) => {
            let result = if approve { "approved" } else { "denied" };
            super::record::approval(st, &p.policy, &p.tool_label, result);
            tracing::info!(
                target: "mcp_warden::audit",
                policy = %p.policy,
                tool = %p.tool,
                identity = %p.identity,
                approval_id = %p.id,
                decision = result,
                decided_by = who,
                "approval decided"
            );
            json(
                StatusCode::OK,
                serde_json::to_vec(&json!({
                    "id": p.id,
                    "decision": result,
                    "tool": p.tool,
                    "identity": p.identity,
                    "uses": if approve { p.uses } else { 0 },
                    "ttl_seconds": p.ttl_seconds,
                }))
                .expect("a JSON value serialises"),
            )
        }
        Err(e @ NotPending(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}
