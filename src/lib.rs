//! mcp-warden: a policy gate for MCP servers in Kubernetes.
//!
//! Modules:
//! - [`policy`]: the policy language and its one compile step (shared by every part).
//! - [`engine`]: deciding a `tools/call`, with rolling-window counters.
//! - [`mcp`]: MCP's JSON-RPC on the wire, read fail-closed: the validating scan, the envelope,
//!   SSE splitting, and the filtering of `tools/list` answers.
//! - [`sidecar`]: the enforcing reverse proxy (gate, forwarding, denials, reload, audit).
//! - [`serve`]: HTTP serving shared by the sidecar and the controller: the one accept loop
//!   (timeouts, connection cap, optional TLS), the admin port, the shutdown signal.
//! - [`identity`]: bearer tokens (ServiceAccount, OIDC) verified offline against a key set, with
//!   a bounded cache of verified tokens.
//! - [`metrics`]: the Prometheus metrics of the sidecar and the controller.
//! - [`crd`]: the McpPolicy resource, its CRD and reference docs.
//! - [`cluster`]: what the controller and the webhooks share: names and keys of what mcp-warden
//!   writes, which policy selects a pod, the sidecar container and how an injected pod is
//!   recognised, the webhook configurations.
//! - [`controller`]: reconciling McpPolicies into ConfigMaps, NetworkPolicies and status;
//!   webhook certificates; leader election; the RBAC rules table.
//! - [`webhook`]: the admission webhooks (inject at pod CREATE, validate McpPolicies, guard
//!   injected pods).
//! - [`tools`]: knowing the server's tools: mcp-warden's own MCP client that lists them,
//!   definition hashes (pins) and categories (annotations), the sidecar's live catalog, and the
//!   policy checked against the list.
//! - [`approval`]: the approval wire the controller and the sidecars share (ids, the approvals
//!   file, the admin API's report).
//! - [`peering`]: the peer file the controller renders for the sidecars of one policy, which
//!   hold one budget across replicas.
//! - [`cmd`]: the command line, one module per role with its arguments: `sidecar`, `controller`,
//!   `check` and `pin`, `demo`, `approve` (`approvals|approve|reject`), `generate`.
//! - [`logging`]: batched logs and audit lines.
//!
//! The path of an agent's request through the sidecar (docs/ARCHITECTURE.md tells it in full):
//! `serve::conns` (accept, timeouts, connection cap) → `sidecar::proxy` (HTTP only: Host/Origin,
//! the caller, route, the gated body read within budget) → `sidecar::gate` (headers and body →
//! verdict: `mcp::parse` once, each `tools/call` planned once and decided by `engine`, recorded
//! by `sidecar::record`) → forwarded byte for byte, or answered here (a denial of
//! `sidecar::denial`, or a `sidecar::refusal`) → on the way back, `sidecar::filter` and
//! `mcp::lists` filter every tool list on every stream.
//!
//! Dependencies run one way (`tests/it/layers.rs` holds them): `serve`, `mcp`, `metrics`,
//! `peering` and `logging` depend on no other module; `policy` → `mcp` (its JSON scan); `engine`
//! → `policy`; `crd` → `policy`; `cluster` → `crd`; `webhook` → `cluster`, `serve`; `controller`
//! → `cluster`, `webhook` (it runs the webhook server), `serve`, `approval`, `peering`; `tools` →
//! `policy`, `engine`, `mcp`, `serve`; `sidecar` → `engine`, `mcp`, `serve`, `identity`,
//! `tools`, `approval`, `peering`; `cmd` → everything, and nothing but `main.rs` → `cmd`. Within
//! a module the files depend on each other one way too.
#![forbid(unsafe_code)]

pub mod approval;
pub mod cluster;
pub mod cmd;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod identity;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod peering;
pub mod policy;
pub mod serve;
pub mod sidecar;
pub mod tools;
pub mod webhook;
