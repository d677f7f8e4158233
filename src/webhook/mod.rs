//! The admission webhooks: `/mutate` injects the sidecar into pods an McpPolicy selects. The
//! decision is the pure [`inject::mutate`]; the HTTPS layer around it stays thin.

pub mod inject;
pub mod review;
pub mod server;
pub mod tls;

pub use inject::{mutate, InjectConfig, Mutation};
pub use review::{review_pod, Outcome, PodReview};

#[cfg(test)]
mod tests;
