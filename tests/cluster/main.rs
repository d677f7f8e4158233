//! The operator against a real API server: the one `KUBECONFIG` names. Without one the test
//! says so and passes without checking anything (it never fakes a cluster).
//!
//! It runs the real `mcp-warden controller` binary outside the cluster with `--webhook-url`
//! (the API server must reach `MCP_WARDEN_TEST_WEBHOOK_HOST`, default 127.0.0.1), impersonating
//! a ServiceAccount bound to exactly the rules of `controller::rbac::RULES`, so any API call the
//! code makes that the role does not grant fails the test. Pods stay Pending on a cluster with
//! no nodes: the test reads their stored spec.
//!
//! This file is the harness (the cluster, a test's namespaces and controller, waiting); the
//! tests are in `operator.rs` (the end-to-end path), `certificates.rs` (rotation, an unsynced
//! replica), `identity.rs` (ServiceAccount and external issuers' keys) and `approvals.rs`.

#[path = "../common/mod.rs"]
mod common;

// The tests, by concern.
mod approvals;
mod certificates;
mod identity;
mod operator;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::ResourceExt;
use mcp_warden::approval::{approval_id, Pending};
use mcp_warden::controller::rbac::{Rule, NON_RESOURCE_URLS, RULES, URL_MODE_RULES};
use mcp_warden::crd::approval::{ApprovalPhase, McpApproval};
use mcp_warden::crd::build::PolicyBuilder;
use mcp_warden::crd::McpPolicy;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Says why the test is skipped, past the test harness's output capture; with
/// `MCP_WARDEN_REQUIRE_CLUSTER` set (as CI sets it) a missing cluster fails the test instead.
fn skip(why: String) {
    use std::io::Write as _;
    assert!(
        std::env::var_os("MCP_WARDEN_REQUIRE_CLUSTER").is_none(),
        "cluster test cannot run: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED cluster test: {why}");
}

async fn cluster() -> Option<kube::Client> {
    let Ok(path) = std::env::var("KUBECONFIG") else {
        skip("KUBECONFIG is not set; point it at a cluster to run the operator tests (docs/development.md)".into());
        return None;
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            skip(format!("cannot use KUBECONFIG={path}: {e}"));
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
        Ok(Ok(v)) => {
            eprintln!(
                "cluster tests against Kubernetes {}.{} ({path})",
                v.major, v.minor
            );
            Some(client)
        }
        _ => {
            skip(format!(
                "the API server of KUBECONFIG={path} is not reachable"
            ));
            None
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `name` no longer exists.
async fn wait_gone<K>(what: &str, api: &Api<K>, name: &str, secs: u64)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(what, secs, || async {
        api.get_opt(name)
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await
}

fn apply() -> PatchParams {
    PatchParams::apply("mcp-warden-test").force()
}

/// The table's rules as RBAC JSON; rules on the controller's own objects name `own` (its
/// webhook configurations).
fn rules(namespaced: bool, keep: fn(&Rule) -> bool, own: &str) -> Value {
    let mut out: Vec<Value> = RULES
        .iter()
        .filter(|r| r.namespaced == namespaced && keep(r))
        .map(|r| {
            let mut rule =
                json!({"apiGroups": [r.group], "resources": [r.resource], "verbs": r.verbs});
            if r.own_names {
                rule["resourceNames"] = json!([own]);
            }
            rule
        })
        .collect();
    if !namespaced {
        for (url, verbs) in NON_RESOURCE_URLS {
            out.push(json!({"nonResourceURLs": [url], "verbs": verbs}));
        }
    }
    Value::Array(out)
}

/// A kubeconfig that acts as the controller's ServiceAccount.
fn impersonating_kubeconfig(dir: &std::path::Path, sa_ns: &str) -> std::path::PathBuf {
    let mut kc = kube::config::Kubeconfig::read().expect("KUBECONFIG readable");
    for a in &mut kc.auth_infos {
        if let Some(info) = a.auth_info.as_mut() {
            info.impersonate = Some(format!("system:serviceaccount:{sa_ns}:mcp-warden"));
            info.impersonate_groups = Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]);
        }
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn policy_manifest(ns: &str, name: &str, extra: Value) -> Value {
    PolicyBuilder::new(ns, name)
        .spec(json!({"tools": {"run_cell": {"limits": [{"counter": "run_cell_rate", "window": "minute", "max": 10, "scope": "grant"}]}}}))
        .spec(extra)
        .manifest()
}

fn pod_manifest(name: &str, labels: Value, with_mcp_port: bool) -> Pod {
    let ports = if with_mcp_port {
        json!([{"name": "mcp", "containerPort": 8888}])
    } else {
        json!([{"name": "http", "containerPort": 8888}])
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/jupyter-mcp:1", "ports": ports,
                                 "readinessProbe": {"httpGet": {"path": "/health", "port": "mcp"}}}]}
    }))
    .unwrap()
}

/// Creates a selected pod whose only container is named like the sidecar; the refusal message.
async fn create_pod_named_like_the_sidecar(pods: &Api<Pod>) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "impostor", "labels": {"app": "jupyter-mcp"}},
        "spec": {"containers": [{"name": "mcp-warden", "image": "registry.example/app:1",
                                 "ports": [{"name": "mcp", "containerPort": 8888}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect_err("a container named like the sidecar is refused")
        .to_string()
}

async fn create_pod(
    api: &Api<Pod>,
    name: &str,
    labels: Value,
    with_mcp_port: bool,
) -> kube::Result<Pod> {
    api.create(
        &PostParams::default(),
        &pod_manifest(name, labels, with_mcp_port),
    )
    .await
}

fn has_sidecar(p: &Pod) -> bool {
    let s = p.spec.as_ref().unwrap();
    s.containers
        .iter()
        .chain(s.init_containers.iter().flatten())
        .any(|c| c.name == "mcp-warden")
}

/// The tests run one at a time: each registers cluster-wide webhook configurations (URL mode),
/// and one test's controller must not answer another's reviews.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster, held by this test alone until the guard drops.
async fn cluster_alone() -> Option<(kube::Client, tokio::sync::MutexGuard<'static, ()>)> {
    let client = cluster().await?;
    Some((client, SERIAL.lock().await))
}

/// One test's share of the cluster: its namespaces (the controller's, an opted-in one and a
/// plain one), the controller's least-privilege identity, and its webhook configurations.
struct Env {
    client: kube::Client,
    sys: String,
    on: String,
    off: String,
    hooks: String,
    role_name: String,
    dir: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    /// A CA bundle the controller trusts besides the system's (`SSL_CERT_FILE`).
    extra_roots: Option<std::path::PathBuf>,
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, name) in [
        ("mcppolicy.yaml", "mcppolicies.mcpwarden.dev"),
        ("mcpapproval.yaml", "mcpapprovals.mcpwarden.dev"),
    ] {
        let crd: CustomResourceDefinition = serde_yaml::from_str(
            &std::fs::read_to_string(format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap(),
        )
        .unwrap();
        crds.patch(name, &apply(), &Patch::Apply(&crd))
            .await
            .expect("the CRD installs");
        wait_for("the CRD to be established", 30, || {
            let crds = crds.clone();
            async move {
                let c = crds.get(name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}

impl Env {
    async fn new(client: kube::Client, tag: &str) -> Env {
        Env::with_rules(client, tag, |_| true).await
    }

    /// Like `new`, granting only the controller's rules that `keep` keeps.
    async fn with_rules(client: kube::Client, tag: &str, keep: fn(&Rule) -> bool) -> Env {
        remove_stale_webhooks(&client).await;
        let id = format!(
            "{tag}-{:x}",
            std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
        );
        let env = Env {
            sys: format!("mcpw-sys-{id}"),
            on: format!("mcpw-on-{id}"),
            off: format!("mcpw-off-{id}"),
            hooks: format!("mcpw-{id}"),
            role_name: format!("mcp-warden-{id}"),
            dir: std::env::temp_dir().join(format!("mcp-warden-cluster-{id}")),
            kubeconfig: Default::default(),
            extra_roots: None,
            client,
        };
        install_crd(&env.client).await;
        env.grant(keep).await;
        std::fs::create_dir_all(&env.dir).unwrap();
        let kubeconfig = impersonating_kubeconfig(&env.dir, &env.sys);
        Env { kubeconfig, ..env }
    }

    async fn grant(&self, keep: fn(&Rule) -> bool) {
        let (client, pp) = (&self.client, apply());
        let (sys, on, off, role_name) = (&self.sys, &self.on, &self.off, &self.role_name);
        // Namespaces and the controller's least-privilege identity.
        let nss: Api<Namespace> = Api::all(client.clone());
        for (ns, labelled) in [(sys, false), (on, true), (off, false)] {
            let labels = if labelled {
                json!({"mcpwarden.dev/injection": "enabled"})
            } else {
                json!({})
            };
            nss.patch(ns, &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})))
                .await
                .unwrap();
        }
        let croles: Api<ClusterRole> = Api::all(client.clone());
        croles
            .patch(
                role_name,
                &pp,
                &Patch::Apply(
                    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": role_name}, "rules": rules(false, keep, &self.hooks)}),
                ),
            )
            .await
            .unwrap();
        let cbindings: Api<ClusterRoleBinding> = Api::all(client.clone());
        cbindings.patch(role_name, &pp, &Patch::Apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role_name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": "mcp-warden", "namespace": sys}]}))).await.unwrap();
        let roles: Api<Role> = Api::namespaced(client.clone(), sys);
        roles
            .patch(
                "mcp-warden",
                &pp,
                &Patch::Apply(
                    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "mcp-warden", "namespace": sys}, "rules": rules(true, keep, &self.hooks)}),
                ),
            )
            .await
            .unwrap();
        let rbs: Api<RoleBinding> = Api::namespaced(client.clone(), sys);
        rbs.patch("mcp-warden", &pp, &Patch::Apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "mcp-warden", "namespace": sys}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mcp-warden"},
            "subjects": [{"kind": "ServiceAccount", "name": "mcp-warden", "namespace": sys}]}))).await.unwrap();
        self.apply_owned_writes_policy().await;
        // In URL mode the controller registers the webhook configurations itself.
        let dev_role = format!("{role_name}-dev");
        let dev_rules: Value = URL_MODE_RULES
            .iter()
            .map(|r| json!({"apiGroups": [r.group], "resources": [r.resource], "verbs": r.verbs}))
            .collect();
        croles
            .patch(
                &dev_role,
                &pp,
                &Patch::Apply(
                    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": dev_role}, "rules": dev_rules}),
                ),
            )
            .await
            .unwrap();
        cbindings.patch(&dev_role, &pp, &Patch::Apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": dev_role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": dev_role},
            "subjects": [{"kind": "ServiceAccount", "name": "mcp-warden", "namespace": sys}]}))).await.unwrap();
    }

    /// Starts the real controller binary as the ServiceAccount, registering the webhooks by
    /// URL; returns it with its admin port once `/readyz` answers 200.
    async fn controller(&self, extra: &[&str]) -> (Controller, u16) {
        let (child, admin) = self.spawn_controller(extra);
        wait_for("the controller to be ready", 60, || async move {
            admin_get(admin, "/readyz")
                .await
                .filter(|r| r.starts_with("HTTP/1.1 200"))
                .map(|_| ())
        })
        .await;
        (child, admin)
    }

    fn spawn_controller(&self, extra: &[&str]) -> (Controller, u16) {
        let host =
            std::env::var("MCP_WARDEN_TEST_WEBHOOK_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        let port = free_port();
        let admin = free_port();
        let log = std::fs::File::create(self.dir.join("controller.log")).unwrap();
        let url = format!("https://{host}:{port}");
        let admin_listen = format!("127.0.0.1:{admin}");
        let mut args = vec![
            "controller",
            "--namespace",
            &self.sys,
            "--identity",
            "test-replica",
            "--webhook-url",
            &url,
            "--admin-listen",
            &admin_listen,
            "--webhook-config",
            &self.hooks,
            "--native-sidecar",
            "false",
            "--cert-interval-seconds",
            "2",
            "--drain-delay-seconds",
            "0",
            "--log-format",
            "text",
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-warden"));
        if let Some(roots) = &self.extra_roots {
            cmd.env("SSL_CERT_FILE", roots);
        }
        let child = Controller(
            cmd.args(&args)
                .env("KUBECONFIG", &self.kubeconfig)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        eprintln!(
            "controller log: {}",
            self.dir.join("controller.log").display()
        );
        (child, admin)
    }

    fn mutating(&self) -> Api<DynamicObject> {
        Api::all_with(
            self.client.clone(),
            &kube::api::ApiResource::erase::<
                k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
            >(&()),
        )
    }

    /// The CA bundle of the mutating webhook, once the controller has published one.
    async fn ca_bundle(&self) -> String {
        let m = self.mutating();
        let hooks = self.hooks.clone();
        wait_for("the webhook configuration with its caBundle", 60, || {
            let (m, hooks) = (m.clone(), hooks.clone());
            async move {
                let c = m.get(&hooks).await.ok()?;
                let b64 = c.data["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
                use base64::Engine as _;
                let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                Some(String::from_utf8(pem).ok()?).filter(|s| !s.is_empty())
            }
        })
        .await
    }

    /// The chart's ValidatingAdmissionPolicy that narrows the controller's ConfigMap and
    /// NetworkPolicy writes to the ones it owns, rendered by Helm for this environment's
    /// ServiceAccount and applied as the chart would.
    async fn apply_owned_writes_policy(&self) {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let helm = std::env::var("MCP_WARDEN_HELM_CURRENT")
            .or_else(|_| std::env::var("MCP_WARDEN_HELM"))
            .expect("the cluster tests render the chart's admission policy with Helm: set MCP_WARDEN_HELM_CURRENT (.ci/run does)");
        let out = Command::new(helm)
            .args(["template", &self.hooks])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mcp-warden"))
            .args([
                "--namespace",
                &self.sys,
                "--show-only",
                "templates/admissionpolicy.yaml",
            ])
            .args(["--set", "serviceAccount.name=mcp-warden", "--set"])
            .arg(format!("fullnameOverride={}", self.hooks))
            .args([
                "--kube-version",
                "1.33.0",
                "--api-versions",
                "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
            ])
            .output()
            .expect("helm runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let docs: Vec<&str> = text
            .split("\n---")
            .filter(|d| d.contains("kind:"))
            .collect();
        assert_eq!(docs.len(), 2, "a policy and its binding: {text}");
        let vap: ValidatingAdmissionPolicy = serde_yaml::from_str(docs[0]).unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde_yaml::from_str(docs[1]).unwrap();
        let name = vap.metadata.name.clone().unwrap();
        Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .patch(&name, &apply(), &Patch::Apply(&vap))
            .await
            .expect("the admission policy applies");
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .patch(&name, &apply(), &Patch::Apply(&binding))
            .await
            .expect("its binding applies");
    }

    /// A client acting as the controller's ServiceAccount.
    async fn as_controller(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    async fn cleanup(self) {
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        let owned = format!("{}-owned-writes", self.hooks);
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .delete(&owned, &DeleteParams::default())
            .await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .delete(&owned, &DeleteParams::default())
            .await;
        let nss: Api<Namespace> = Api::all(self.client.clone());
        for ns in [&self.sys, &self.on, &self.off] {
            let _ = nss.delete(ns, &DeleteParams::default()).await;
        }
        let croles: Api<ClusterRole> = Api::all(self.client.clone());
        let cbindings: Api<ClusterRoleBinding> = Api::all(self.client.clone());
        for name in [self.role_name.clone(), format!("{}-dev", self.role_name)] {
            let _ = croles.delete(&name, &DeleteParams::default()).await;
            let _ = cbindings.delete(&name, &DeleteParams::default()).await;
        }
        let _ = self
            .mutating()
            .delete(&self.hooks, &DeleteParams::default())
            .await;
        let validating: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &kube::api::ApiResource::erase::<
                k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
            >(&()),
        );
        let _ = validating
            .delete(&self.hooks, &DeleteParams::default())
            .await;
    }
}

/// Webhook configurations a failed earlier test left behind point at a dead controller and
/// would refuse every McpPolicy and opted-in pod; no other test runs now (SERIAL), so every
/// `mcpw-` registration is stale.
/// Deletes every object of `api` whose name a test environment gave it (`mcpw-…`).
async fn delete_test_objects<K>(api: &Api<K>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for c in api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = c.meta().name.clone().unwrap_or_default();
        if name.starts_with("mcpw-") {
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
}

async fn remove_stale_webhooks(client: &kube::Client) {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    delete_test_objects(&Api::<MutatingWebhookConfiguration>::all(client.clone())).await;
    delete_test_objects(&Api::<ValidatingWebhookConfiguration>::all(client.clone())).await;
}

/// A raw GET on the controller's admin port (no HTTP client dependency).
async fn admin_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.ok()?;
    String::from_utf8(out).ok()
}
