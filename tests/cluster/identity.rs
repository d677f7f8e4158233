//! Identities verified with the cluster's keys, and an external issuer's keys fetched and rotated.

use super::*;

/// A token for ServiceAccount `ns/name` from the TokenRequest API, for `audience`.
async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
    audience: &str,
) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    if sas.get_opt(name).await.unwrap().is_none() {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_owned()],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create_token_request(name, &PostParams::default(), &req)
        .await
        .expect("the TokenRequest API mints a token")
        .status
        .expect("a minted token")
        .token
}

/// Identity end to end: the controller renders the API server's issuer and keys beside the
/// policy, the sidecar (fed that ConfigMap, as its volume would be) admits tokens the TokenRequest
/// API minted for the policy's audience, applies the CI ServiceAccount's grant per
/// ServiceAccount, and refuses a token for another audience.
#[tokio::test]
async fn service_account_identities_are_verified_with_the_clusters_keys() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "id").await;
    let on = env.on.clone();
    let (_controller, _admin) = env.controller(&[]).await;
    let ci = format!("system:serviceaccount:{on}:ci-agent");
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(
        PolicyBuilder::new(&on, "agents")
            .spec(json!({
                "identity": {"serviceAccount": {"audiences": ["mcp-warden"]}, "required": true},
                "tools": {"notebook_read": {}, "write_file": {"limits": [
                    {"counter": "writes", "window": "hour", "max": 2, "scope": "grant"}]}},
                "grants": [{"subjects": [ci], "tools": {"write_file": {"limits": [
                    {"counter": "ci_writes", "window": "hour", "max": 3, "scope": "grant"}]}}}]
            }))
            .manifest(),
    )
    .unwrap();
    policies
        .create(&PostParams::default(), &p)
        .await
        .expect("the API server accepts an McpPolicy with identity and grants");

    // The rendered keys are the API server's own.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let cm = wait_for("the ConfigMap with the cluster's keys", 30, || {
        let cms = cms.clone();
        async move {
            cms.get_opt("agents-mcp-warden")
                .await
                .ok()
                .flatten()
                .filter(|cm| {
                    cm.data
                        .as_ref()
                        .is_some_and(|d| d.contains_key("jwks.json"))
                })
        }
    })
    .await;
    let data = cm.data.unwrap();
    let rendered: Value = serde_json::from_str(&data["jwks.json"]).unwrap();
    let discovery: Value = serde_json::from_str(
        &client
            .request_text(
                http::Request::get("/.well-known/openid-configuration")
                    .body(vec![])
                    .unwrap(),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let jwks: Value = serde_json::from_str(
        &client
            .request_text(http::Request::get("/openid/v1/jwks").body(vec![]).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rendered["issuer"], discovery["issuer"]);
    assert_eq!(rendered["keys"], jwks["keys"]);
    let status = wait_for("KeysUnavailable=False in the status", 30, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("agents").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "KeysUnavailable" && c.status == "False")
                .then_some(s)
        }
    })
    .await;
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    // The sidecar reads the ConfigMap's two keys, as from its volume.
    let dir = env.dir.join("sidecar");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.json"), &data["policy.json"]).unwrap();
    std::fs::write(dir.join("jwks.json"), &data["jwks.json"]).unwrap();
    let up = common::upstream(false, true).await;
    let keys = dir.join("jwks.json");
    let sc = common::sidecar_at(&up.url(), &dir.join("policy.json"), |c| {
        c.jwks_path = Some(keys)
    })
    .await;

    let ci_token = service_account_token(&client, &on, "ci-agent", "mcp-warden").await;
    let helper_token = service_account_token(&client, &on, "helper", "mcp-warden").await;
    let wrong_audience = service_account_token(&client, &on, "helper", "other-audience").await;
    let call = |id: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"write_file","arguments":{{}}}}}}"#
        )
    };
    let write = |token: String, id: u64| {
        let url = sc.url();
        async move {
            let auth = format!("Bearer {token}");
            let raw = common::post_json(
                &url,
                &[
                    ("authorization", &auth),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
                &call(id),
            )
            .await;
            assert_eq!(raw.0, 200, "{}", String::from_utf8_lossy(&raw.2));
            let msg = &common::messages(&raw)[0];
            let rec = msg["result"]["_meta"]["dev.mcpwarden/decision"].clone();
            match msg["result"]["isError"].as_bool() {
                Some(true) => (rec["decision"].as_str().unwrap().to_owned(), rec),
                _ => ("allow".to_owned(), rec),
            }
        }
    };
    for id in 0..3 {
        assert_eq!(write(ci_token.clone(), id).await.0, "allow");
    }
    let (decision, rec) = write(ci_token.clone(), 3).await;
    assert_eq!(decision, "rate_limited");
    assert_eq!(rec["identity"], ci.as_str());
    assert_eq!(rec["grant"], "grants[0]");
    assert_eq!(rec["counter"], "ci_writes");
    for id in 10..12 {
        assert_eq!(write(helper_token.clone(), id).await.0, "allow");
    }
    let (decision, rec) = write(helper_token.clone(), 12).await;
    assert_eq!(decision, "rate_limited");
    assert_eq!(
        rec["counter"], "writes",
        "another ServiceAccount gets the base limit"
    );

    let before = up.requests();
    let auth = format!("Bearer {wrong_audience}");
    let raw = common::post_json(
        &sc.url(),
        &[
            ("authorization", &auth),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        &call(20),
    )
    .await;
    assert_eq!(raw.0, 401);
    assert!(raw.1["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer "));
    let body: Value = serde_json::from_slice(&raw.2).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another audience"),
        "{body}"
    );
    assert_eq!(up.requests(), before, "nothing was forwarded");
    env.cleanup().await;
}

/// An OIDC issuer's key set endpoint over HTTPS (a certificate from a CA of its own): its URL,
/// the CA's PEM, and the body it serves, which the test may change.
async fn jwks_endpoint(body: String) -> (String, String, std::sync::Arc<std::sync::Mutex<String>>) {
    use mcp_warden::serve::{accept_loop, full, tls as stls, Limits};
    use mcp_warden::webhook::tls::{certified_key, issue, new_ca, TLS_CERT, TLS_KEY};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (ca, ca_key) = new_ca(now, Duration::from_secs(3600)).unwrap();
    let (cert, key) = issue(
        &ca,
        &ca_key,
        &["127.0.0.1".into()],
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    let slot = std::sync::Arc::new(stls::CertSlot::default());
    slot.set(
        certified_key(&[(TLS_CERT.to_string(), cert), (TLS_KEY.to_string(), key)].into()).unwrap(),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(stls::config(slot));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::Mutex::new(body));
    let s = served.clone();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = _stop_tx;
        accept_loop(
            listener,
            stop,
            std::sync::Arc::new(hyper_util::server::graceful::GracefulShutdown::new()),
            Limits {
                header_timeout: Duration::from_secs(10),
                max_connections: 16,
            },
            Some(acceptor),
            move |_req| {
                let body = s.lock().unwrap().clone();
                async move {
                    let mut r = http::Response::new(full(bytes::Bytes::from(body)));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r
                }
            },
        )
        .await;
    });
    (format!("https://127.0.0.1:{port}/jwks"), ca, served)
}

/// `identity.jwt`: the controller fetches an external issuer's key set from `jwksFrom` over
/// HTTPS, renders it with the policy's issuer, and renders the issuer's next keys after a
/// rotation, within the refresh interval.
#[tokio::test]
async fn an_external_issuers_keys_are_fetched_and_follow_a_rotation() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let first = include_str!("../fixtures/identity/rsa-test-jwks.json").to_string();
    let (url, ca, served) = jwks_endpoint(first.clone()).await;
    let mut env = Env::new(client.clone(), "jwt").await;
    let roots = env.dir.join("roots.pem");
    std::fs::write(&roots, &ca).unwrap();
    env.extra_roots = Some(roots);
    let on = env.on.clone();
    let (_controller, _admin) = env.controller(&["--jwks-refresh-seconds", "2"]).await;
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(
        PolicyBuilder::new(&on, "external")
            .spec(
                json!({"identity": {"jwt": {"issuer": "https://id.example.com",
                          "audiences": ["mcp"], "jwksFrom": url}, "required": true},
                         "tools": {"notebook_read": {}}}),
            )
            .manifest(),
    )
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let keys_of = |cms: Api<ConfigMap>| async move {
        let cm = cms.get_opt("external-mcp-warden").await.ok()??;
        serde_json::from_str::<Value>(cm.data?.get("jwks.json")?).ok()
    };
    let rendered = wait_for("the issuer's keys in the ConfigMap", 30, || {
        let cms = cms.clone();
        async move { keys_of(cms).await }
    })
    .await;
    let want: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(rendered["issuer"], "https://id.example.com");
    assert_eq!(rendered["keys"], want["keys"]);

    // The issuer rotates to a new key: it reaches the ConfigMap without any change to the policy.
    let (jwk, _) = mcp_warden::identity::p256_signing_key("rotated");
    let rotated = json!({"keys": [jwk]});
    *served.lock().unwrap() = rotated.to_string();
    wait_for("the rotated key in the ConfigMap", 60, || {
        let cms = cms.clone();
        async move {
            keys_of(cms)
                .await
                .filter(|k| k["keys"][0]["kid"] == "rotated")
        }
    })
    .await;

    // The issuer breaks: the rotated keys stay and the policy says why.
    *served.lock().unwrap() = "<html>maintenance</html>".into();
    let status = wait_for("KeysUnavailable=True", 90, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("external").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "KeysUnavailable" && c.status == "True")
                .then_some(s)
        }
    })
    .await;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "KeysUnavailable")
        .unwrap();
    assert!(c.message.contains("keep the keys"), "{}", c.message);
    assert_eq!(
        keys_of(cms.clone()).await.unwrap()["keys"][0]["kid"],
        "rotated"
    );
    env.cleanup().await;
}
