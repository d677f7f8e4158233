//! The integration tests as one binary: each file was a test binary of its own, and each linked
//! the whole crate again. `cargo test --test it MODULE::` runs one file's tests
//! (`cargo test --test it sidecar_wire::`). The operator's tests on a real cluster are their
//! own target (`tests/cluster/`, `cargo test --test cluster`).

#[path = "../common/mod.rs"]
mod common;

mod binary;
mod check_cli;
mod deploy;
mod docs;
mod examples;
mod layers;
mod rbac;
mod sidecar_approvals;
mod sidecar_bypass;
mod sidecar_confirm;
mod sidecar_identity;
mod sidecar_ops;
mod sidecar_peers;
mod sidecar_rmcp;
mod sidecar_tools;
mod sidecar_wire;
mod webhook_https;
