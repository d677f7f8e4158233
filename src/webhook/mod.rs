//! The admission webhooks: `/mutate` injects the sidecar into pods an McpPolicy selects,
//! `/validate` checks McpPolicies, `/guard` keeps injected pods guarded through UPDATEs and
//! ephemeral containers, `/mutate-approval` and `/validate-approval` stamp and check decisions
//! on McpApprovals. The decisions are pure functions ([`inject::mutate`],
//! [`guard::check_update`], [`approval::refusal`]); the HTTPS layer around them stays thin.

pub mod approval;
pub mod guard;
pub mod inject;
pub mod review;
pub mod server;
pub mod tls;

pub use inject::{mutate, Mutation};
pub use review::{review_pod, Outcome, PodReview};

#[cfg(test)]
mod tests;
