//! mcp-warden: a policy gate for MCP servers in Kubernetes.
//!
//! - [`policy`]: the policy language and its one compile step (shared by every part).
//! - [`engine`]: deciding a `tools/call`, with rolling-window counters.
//! - [`check`]: offline validation and explanation of policies (`mcp-warden check`).
//! - [`mcp`]: the JSON-RPC envelope, read fail-closed.
//! - [`sidecar`]: the enforcing reverse proxy; [`metrics`]: its Prometheus metrics.
//! - [`demo`]: the no-cluster demonstration.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod engine;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod sidecar;
pub mod webhook;
