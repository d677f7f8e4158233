//! The admission webhooks: `/mutate` injects the sidecar into pods an McpPolicy selects,
//! `/validate` checks McpPolicies, `/guard` keeps injected pods guarded through UPDATEs and
//! ephemeral containers. The decisions are pure functions ([`inject::mutate`],
//! [`guard::check_update`]); the HTTPS layer around them stays thin.

pub mod guard;
pub mod inject;
pub mod review;
pub mod server;
pub mod tls;

pub use inject::{mutate, Mutation};
pub use review::{review_pod, Outcome, PodReview};

#[cfg(test)]
mod tests;
