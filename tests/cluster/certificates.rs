//! Webhook certificates rotating under admissions, and a replica that has not synced.

use super::*;

fn certificates(pem: &str) -> Vec<String> {
    pem.split("-----END CERTIFICATE-----")
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|c| c.trim().to_string())
        .collect()
}

fn expiry(metrics: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with("mcp_warden_webhook_certificate_expiry_timestamp_seconds"))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Certificates rotate with overlap against the real API server, with lifetimes shortened by
/// flag (CA 45 s, serving 15 s, overlap 5 s): pods created every second throughout are all
/// admitted and injected (failurePolicy Fail would refuse them on any TLS failure), `caBundle`
/// holds old and new CA during the overlap and only the new one after the old expires, and the
/// expiry metric moves with every reissued serving certificate.
#[tokio::test]
async fn webhook_certificates_rotate_with_overlap_while_pods_are_admitted() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "rot").await;
    let (_controller, admin) = env
        .controller(&[
            "--ca-validity-seconds",
            "45",
            "--cert-validity-seconds",
            "15",
            "--ca-overlap-seconds",
            "5",
        ])
        .await;
    let first = certificates(&env.ca_bundle().await);
    assert_eq!(first.len(), 1, "one CA at first");
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &env.on);
    let p: McpPolicy =
        serde_json::from_value(policy_manifest(&env.on, "jupyter", json!({}))).unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &env.on);
    wait_for("the policy in the webhook's cache", 30, || {
        let pods = pods.clone();
        async move {
            let p = create_pod(&pods, "probe", json!({"app": "jupyter-mcp"}), true)
                .await
                .ok()?;
            let _ = pods.delete("probe", &DeleteParams::default()).await;
            has_sidecar(&p).then_some(())
        }
    })
    .await;

    let (mut max_cas, mut expiries, mut admitted) = (1, std::collections::BTreeSet::new(), 0);
    let start = Instant::now();
    let mut last_bundle = first.clone();
    while start.elapsed() < Duration::from_secs(60) {
        let name = format!("during-rotation-{admitted}");
        let created = create_pod(&pods, &name, json!({"app": "jupyter-mcp"}), true)
            .await
            .unwrap_or_else(|e| panic!("pod refused {:?} into the rotation: {e}", start.elapsed()));
        assert!(has_sidecar(&created), "{name} was not injected");
        admitted += 1;
        last_bundle = certificates(&env.ca_bundle().await);
        max_cas = max_cas.max(last_bundle.len());
        if let Some(e) = admin_get(admin, "/metrics")
            .await
            .as_deref()
            .and_then(expiry)
        {
            expiries.insert(e);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    eprintln!(
        "rotation: {admitted} pods admitted, bundle held up to {max_cas} CAs, {} serving certificates seen",
        expiries.len()
    );
    assert_eq!(
        max_cas, 2,
        "the next CA joined the bundle beside the old one"
    );
    assert_eq!(last_bundle.len(), 1, "the expired CA left the bundle");
    assert_ne!(last_bundle, first, "the CA was replaced");
    assert!(
        expiries.len() >= 3,
        "serving certificates were reissued: {expiries:?}"
    );
    env.cleanup().await;
}

/// A replica whose McpPolicy cache cannot sync (here: its role lacks `list` on McpPolicies) is
/// unready and refuses every pod review in an opted-in namespace, so `failurePolicy: Fail`
/// refuses the pod, instead of admitting it unguarded; other namespaces are not affected.
#[tokio::test]
async fn an_unsynced_replica_refuses_instead_of_skipping() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::with_rules(client.clone(), "unsync", |r| r.resource != "mcppolicies").await;
    let (_controller, admin) = env.spawn_controller(&[]);
    env.ca_bundle().await;
    // Its serving certificate loaded: what refuses below is the unsynced cache, not TLS.
    wait_for("the serving certificate loaded", 30, || async move {
        admin_get(admin, "/metrics")
            .await
            .as_deref()
            .and_then(expiry)
            .map(|_| ())
    })
    .await;
    let readyz = admin_get(admin, "/readyz").await.unwrap_or_default();
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(
        readyz.contains("McpPolicy cache has not synced"),
        "{readyz}"
    );
    let guarded: Api<Pod> = Api::namespaced(client.clone(), &env.on);
    let err = create_pod(&guarded, "unguarded", json!({"app": "jupyter-mcp"}), true)
        .await
        .expect_err("an unsynced replica must not let a pod through unguarded");
    assert!(err.to_string().contains("mcp-warden is not ready"), "{err}");
    let plain: Api<Pod> = Api::namespaced(client.clone(), &env.off);
    create_pod(&plain, "plain", json!({"app": "jupyter-mcp"}), true)
        .await
        .expect("namespaces that did not opt in are not affected");
    env.cleanup().await;
}
