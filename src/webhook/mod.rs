//! The admission webhooks: `/mutate` injects the sidecar into pods an McpPolicy selects. The
//! decision is the pure [`inject::mutate`]; the HTTPS layer around it stays thin.

pub mod inject;
pub mod review;

pub use inject::{mutate, InjectConfig, Mutation};
pub use review::{review_pod, Outcome};

#[cfg(test)]
mod tests;
