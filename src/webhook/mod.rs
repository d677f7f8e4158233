//! The admission webhooks: `/mutate` injects the sidecar into pods an McpPolicy selects. The
//! decision is the pure [`inject::mutate`]; the HTTPS layer around it stays thin.

pub mod inject;

pub use inject::{mutate, InjectConfig, Mutation};

#[cfg(test)]
mod tests;
