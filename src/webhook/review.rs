//! AdmissionReview in, AdmissionReview out: the JSON layer between the HTTPS server and
//! [`mutate`].

use super::inject::{mutate, Mutation};
use crate::cluster::InjectConfig;
use crate::crd::manifest::{read_document, Document};
use crate::crd::McpPolicy;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
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

/// The request of an AdmissionReview body, or why there is none.
fn read_request<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<T> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|e| format!("AdmissionReview without a request: {e}"))
}

/// A refusal of any AdmissionReview for `reason`, answering the request's uid (the API server
/// discards an answer without it, and the user would see "invalid webhook response" instead of
/// the reason).
pub fn refuse(body: &[u8], reason: String) -> AdmissionReview<DynamicObject> {
    match read_request::<DynamicObject>(body) {
        Ok(req) => AdmissionResponse::from(&req).deny(reason).into_review(),
        Err(unreadable) => {
            AdmissionResponse::invalid(format!("{reason}; {unreadable}")).into_review()
        }
    }
}

/// The answer to one pod AdmissionReview.
#[derive(Debug)]
pub struct PodReview {
    pub review: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
    /// A dry run: record no Events.
    pub dry_run: bool,
    /// The pod, for Events (its name may still be only a `generateName` prefix).
    pub pod: Option<ObjectReference>,
}

/// Answers a pod AdmissionReview; `policies(namespace)` gives the McpPolicies of the pod's
/// namespace.
pub fn review_pod(
    body: &[u8],
    policies: impl FnOnce(&str) -> Vec<McpPolicy>,
    cfg: &InjectConfig,
) -> PodReview {
    let req: AdmissionRequest<Pod> = match read_request(body) {
        Ok(r) => r,
        Err(reason) => {
            return PodReview {
                review: AdmissionResponse::invalid(&reason).into_review(),
                outcome: Outcome::Error { reason },
                dry_run: false,
                pod: None,
            }
        }
    };
    let dry_run = req.dry_run;
    let response = AdmissionResponse::from(&req);
    let Some(mut pod) = req.object.clone() else {
        let reason = "the request carries no pod".to_string();
        return PodReview {
            review: response.deny(&reason).into_review(),
            outcome: Outcome::Error { reason },
            dry_run,
            pod: None,
        };
    };
    // Pods created by a controller often have no namespace in the object yet.
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = req.namespace.clone();
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.clone()),
        name: pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone()),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    let (response, outcome) = match mutate(&pod, &policies(&ns), cfg) {
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
    PodReview {
        review: response.into_review(),
        outcome,
        dry_run,
        pod: Some(reference),
    }
}

/// Answers an McpPolicy AdmissionReview (CREATE/UPDATE): refuses what the schema cannot express
/// (a bad regex, an argument path that does not parse, a counter defined twice), every problem
/// with its field path, using the same compile step as the sidecar.
pub fn review_policy(body: &[u8]) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<DynamicObject> = match read_request(body) {
        Ok(r) => r,
        Err(reason) => return AdmissionResponse::invalid(reason).into_review(),
    };
    let response = AdmissionResponse::from(&req);
    let Some(obj) = req.object.as_ref() else {
        // DELETE carries no object: nothing to validate.
        return response.into_review();
    };
    let object =
        serde_json::to_value(obj).expect("serialising a value built in memory cannot fail");
    match read_document(&object) {
        Document::Policy { .. } | Document::Skipped { .. } => response.into_review(),
        Document::Invalid(errs) => {
            let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
            response
                .deny(format!("invalid McpPolicy: {}", lines.join("; ")))
                .into_review()
        }
    }
}
