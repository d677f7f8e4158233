//! Leader election on a `coordination.k8s.io` Lease: one replica reconciles and manages
//! certificates; every replica serves the webhooks.
//!
//! A Lease is taken over when its holder has not renewed it for `leaseDurationSeconds` as seen
//! by this replica's own clock (the time it last saw the record change), so clock skew between
//! nodes cannot make two leaders. Writes use the Lease's resourceVersion, so of two candidates
//! only one wins. A leader that cannot renew within the duration steps down.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What a candidate does with what it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// The holder let it lapse (or released it): take it over.
    Acquire,
    /// Someone else holds it.
    Follow,
}

/// Decides the next step from the Lease spec, who we are, and how long ago (by our clock) the
/// record last changed.
pub fn step(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Step::Renew;
    }
    let lapse = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if holder.is_empty() || unchanged_for >= lapse {
        Step::Acquire
    } else {
        Step::Follow
    }
}

/// The election's settings.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// Set on the Lease when this replica creates it (garbage-collected with the installation).
    pub owner: Option<OwnerReference>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// How long one round may take: two thirds of the duration (as client-go's renew deadline), so
/// a leader whose API server stopped answering steps down before another replica may take over.
pub fn renew_deadline(duration: Duration) -> Duration {
    (duration * 2 / 3).max(Duration::from_millis(500))
}

/// Campaigns until `stop`, publishing leadership on `leader`. Releases the Lease on stop.
pub async fn campaign(
    client: kube::Client,
    e: Election,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    let retry = (e.duration / 3).max(Duration::from_millis(200));
    // (resourceVersion seen, when we first saw it)
    let mut seen: Option<(String, Instant)> = None;
    let mut last_renew = Instant::now();
    loop {
        let held =
            match tokio::time::timeout(renew_deadline(e.duration), attempt(&api, &e, &mut seen))
                .await
            {
                Ok(held) => held,
                Err(_) => Err(kube::Error::Service(
                    format!("no answer within {:?}", renew_deadline(e.duration)).into(),
                )),
            };
        match held {
            Ok(true) => last_renew = Instant::now(),
            Ok(false) => {}
            Err(ref err) => tracing::warn!(error = %err, lease = %e.name, "leader election"),
        }
        let is_leader = match held {
            Ok(h) => h,
            // Keep leading through brief API errors, but never past the lease duration.
            Err(_) => *leader.borrow() && last_renew.elapsed() < e.duration,
        };
        if *leader.borrow() != is_leader {
            tracing::info!(identity = %e.identity, leader = is_leader, "leadership changed");
            let _ = leader.send(is_leader);
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => break,
        }
    }
    if *leader.borrow() {
        let _ = leader.send(false);
        release(&api, &e).await;
    }
}

/// One round: returns whether we hold the Lease afterwards.
async fn attempt(
    api: &Api<Lease>,
    e: &Election,
    seen: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&e.name).await?;
    let rv = current
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone())
        .unwrap_or_default();
    let since = match seen {
        Some((v, at)) if *v == rv => *at,
        _ => {
            *seen = Some((rv, Instant::now()));
            Instant::now()
        }
    };
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let secs = e.duration.as_secs().max(1) as i32;
    match step(spec, &e.identity, since.elapsed()) {
        Step::Follow => Ok(false),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(e.name.clone()),
                    namespace: Some(e.namespace.clone()),
                    owner_references: e.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(e.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
        step @ (Step::Renew | Step::Acquire) => {
            let mut lease = current.expect("a Lease was read");
            let spec = lease.spec.get_or_insert_with(Default::default);
            if step == Step::Acquire {
                spec.holder_identity = Some(e.identity.clone());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(now());
            match api.replace(&e.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// Gives the Lease up so another replica takes over at once instead of after the duration.
async fn release(api: &Api<Lease>, e: &Election) {
    let Ok(Some(mut lease)) = api.get_opt(&e.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(e.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&e.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %e.name, "leadership released"),
        Err(err) => tracing::warn!(error = %err, "could not release the Lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: by.map(Into::into),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(step(None, "a", Duration::ZERO), Step::Create);
    }

    #[test]
    fn the_holder_renews_and_others_follow_until_it_lapses() {
        let l = held(Some("a"), 15);
        assert_eq!(step(Some(&l), "a", Duration::from_secs(100)), Step::Renew);
        assert_eq!(step(Some(&l), "b", Duration::from_secs(14)), Step::Follow);
        assert_eq!(step(Some(&l), "b", Duration::from_secs(15)), Step::Acquire);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let l = held(None, 1);
        assert_eq!(step(Some(&l), "b", Duration::ZERO), Step::Acquire);
        let l = held(Some(""), 15);
        assert_eq!(step(Some(&l), "b", Duration::ZERO), Step::Acquire);
    }
}
