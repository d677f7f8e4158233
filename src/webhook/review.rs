//! AdmissionReview in, AdmissionReview out: the JSON layer between the HTTPS server and
//! [`mutate`](super::mutate).

use super::inject::{mutate, InjectConfig, Mutation};
use crate::crd::McpPolicy;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;

/// What happened to one pod, for Events and `injections_total{result}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected {
        policy: String,
    },
    Skipped {
        reason: String,
    },
    Refused {
        reason: String,
    },
    /// The review could not be read or answered.
    Error {
        reason: String,
    },
}

impl Outcome {
    /// The `result` label of `injections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Injected { .. } => "injected",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Refused { .. } => "refused",
            Outcome::Error { .. } => "error",
        }
    }
}

/// Answers a pod AdmissionReview. `dry_run` tells the caller not to record Events.
pub fn review_pod(
    body: &[u8],
    policies: &[McpPolicy],
    cfg: &InjectConfig,
) -> (AdmissionReview<DynamicObject>, Outcome, bool) {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("unreadable AdmissionReview: {e}");
            return (
                AdmissionResponse::invalid(&reason).into_review(),
                Outcome::Error { reason },
                false,
            );
        }
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("AdmissionReview without a request: {e}");
            return (
                AdmissionResponse::invalid(&reason).into_review(),
                Outcome::Error { reason },
                false,
            );
        }
    };
    let dry_run = req.dry_run;
    let response = AdmissionResponse::from(&req);
    let Some(mut pod) = req.object.clone() else {
        let reason = "the request carries no pod".to_string();
        return (
            response.deny(&reason).into_review(),
            Outcome::Error { reason },
            dry_run,
        );
    };
    // Pods created by a controller often have no namespace in the object yet.
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = req.namespace.clone();
    }
    let (response, outcome) = match mutate(&pod, policies, cfg) {
        Mutation::Inject { patch, policy } => match response.clone().with_patch(patch) {
            Ok(r) => (r, Outcome::Injected { policy }),
            Err(e) => {
                let reason = format!("could not encode the patch: {e}");
                (response.deny(&reason), Outcome::Error { reason })
            }
        },
        Mutation::Skip(reason) => (response, Outcome::Skipped { reason }),
        Mutation::Refuse(reason) => (response.deny(&reason), Outcome::Refused { reason }),
    };
    (response.into_review(), outcome, dry_run)
}
