//! mcp-warden: a policy gate for MCP servers in Kubernetes.
//!
//! - [`policy`]: the policy language and its one compile step (shared by every part).
//! - [`engine`]: deciding a `tools/call`, with rolling-window counters.
//! - [`check`]: offline validation and explanation of policies (`mcp-warden check`).
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod engine;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod sidecar;
