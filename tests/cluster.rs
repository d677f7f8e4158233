//! The operator against a real API server: the one `KUBECONFIG` names. Without one the test
//! says so and passes without checking anything (it never fakes a cluster).
//!
//! It runs the real `mcp-warden controller` binary outside the cluster with `--webhook-url`
//! (the API server must reach `MCP_WARDEN_TEST_WEBHOOK_HOST`, default 127.0.0.1), impersonating
//! a ServiceAccount bound to exactly the rules of `controller::rbac::RULES`, so any API call the
//! code makes that the role does not grant fails the test. Pods stay Pending on a cluster with
//! no nodes: the test reads their stored spec.

mod common;

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

#[tokio::test]
async fn the_operator_end_to_end_on_a_real_api_server() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "e2e").await;
    let (on, off) = (env.on.clone(), env.off.clone());
    let (_controller, _admin) = env.controller(&[]).await;
    env.ca_bundle().await;

    // A valid policy: ConfigMap and status appear.
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(policy_manifest(&on, "jupyter", json!({}))).unwrap();
    policies
        .create(&PostParams::default(), &p)
        .await
        .expect("a valid McpPolicy is accepted");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let first = wait_for("the rendered ConfigMap", 30, || {
        let cms = cms.clone();
        async move { cms.get_opt("jupyter-mcp-warden").await.ok().flatten() }
    })
    .await;
    let doc: Value = serde_json::from_str(&first.data.as_ref().unwrap()["policy.json"]).unwrap();
    assert_eq!(doc["name"], format!("{on}/jupyter"));
    assert_eq!(
        first.metadata.owner_references.as_ref().unwrap()[0].kind,
        "McpPolicy"
    );
    // The controller's writes are narrowed to what it owns (the chart's admission policy):
    // its own ConfigMap was written above, but not another one, created or patched.
    let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    admin_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "someone-elses"}, "data": {"k": "v"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let controller_cms: Api<ConfigMap> = Api::namespaced(env.as_controller().await, &on);
    // (The API server loads a new admission policy within seconds: retry until it acts.)
    let err = wait_for("the admission policy to refuse the controller", 30, || {
        let controller_cms = controller_cms.clone();
        async move {
            controller_cms
                .patch(
                    "someone-elses",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"k": "x"}})),
                )
                .await
                .err()
                .filter(|e| e.to_string().contains("may only write"))
        }
    })
    .await;
    assert!(err.to_string().contains("may only write"), "{err}");
    let err = controller_cms
        .patch("someone-elses", &apply(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "someone-elses", "labels": {"app.kubernetes.io/managed-by": "mcp-warden"}}, "data": {"k": "x"}})))
        .await
        .expect_err("the controller cannot take over a ConfigMap by labelling it");
    assert!(err.to_string().contains("may only write"), "{err}");
    let err = controller_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "unlabelled"}})).unwrap(),
        )
        .await
        .expect_err("the controller cannot create an unlabelled ConfigMap");
    assert!(err.to_string().contains("may only write"), "{err}");
    let status = wait_for("status Ready", 30, || {
        let policies = policies.clone();
        async move {
            let p = policies.get("jupyter").await.ok()?;
            let s = p.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(s)
        }
    })
    .await;
    assert_eq!(status.tool_count, Some(1));
    let hash1 = status.policy_hash.clone().unwrap();

    // An edit is followed.
    policies
        .patch("jupyter", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tools": {"write_file": {"action": "deny", "reason": "read-only"}}}})))
        .await
        .unwrap();
    wait_for("the edit in ConfigMap and status", 30, || {
        let (policies, hash1) = (policies.clone(), hash1.clone());
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            (s.policy_hash.as_deref() != Some(hash1.as_str()) && s.tool_count == Some(2))
                .then_some(())
        }
    })
    .await;

    // Refused by the API server's schema, with the field named.
    let bad_schema: McpPolicy = serde_json::from_value(policy_manifest(&on, "bad-schema", json!({"tools": {"run_cell": {"limits": [{"counter": "c", "window": "minute", "max": 0, "scope": "grant"}]}}}))).unwrap();
    let err = policies
        .create(&PostParams::default(), &bad_schema)
        .await
        .expect_err("max 0 is refused");
    assert!(
        err.to_string()
            .contains("spec.tools.run_cell.limits[0].max"),
        "{err}"
    );
    // Refused by /validate: a regex the schema cannot check.
    let bad_regex: McpPolicy = serde_json::from_value(policy_manifest(&on, "bad-regex", json!({"tools": {"run_cell": {"denyIf": [{"conditions": [{"path": "args.code", "op": "regex", "value": "(oops"}]}]}}}))).unwrap();
    let err = policies
        .create(&PostParams::default(), &bad_regex)
        .await
        .expect_err("a bad regex is refused");
    assert!(
        err.to_string()
            .contains("spec.tools.run_cell.denyIf[0].conditions[0].value"),
        "{err}"
    );

    // Injection.
    let pods_on: Api<Pod> = Api::namespaced(client.clone(), &on);
    let created = create_pod(&pods_on, "guarded", json!({"app": "jupyter-mcp"}), true)
        .await
        .unwrap();
    assert!(has_sidecar(&created), "the stored pod runs the sidecar");
    let stored = pods_on.get("guarded").await.unwrap();
    assert!(has_sidecar(&stored));
    assert_eq!(
        stored.metadata.annotations.as_ref().unwrap()["mcpwarden.dev/policy"],
        format!("{on}/jupyter")
    );
    let opted_out = create_pod(
        &pods_on,
        "opted-out",
        json!({"app": "jupyter-mcp", "mcpwarden.dev/inject": "false"}),
        true,
    )
    .await
    .unwrap();
    assert!(!has_sidecar(&opted_out));
    let err = create_pod(&pods_on, "no-port", json!({"app": "jupyter-mcp"}), false)
        .await
        .expect_err("no mcp port is refused");
    assert!(err.to_string().contains("port named \"mcp\""), "{err}");
    let pods_off: Api<Pod> = Api::namespaced(client.clone(), &off);
    let untouched = create_pod(&pods_off, "plain", json!({"app": "jupyter-mcp"}), true)
        .await
        .unwrap();
    assert!(
        !has_sidecar(&untouched),
        "an unlabelled namespace is untouched"
    );
    wait_for("matchedPods and injectedPods", 30, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            (s.matched_pods == Some(2) && s.injected_pods == Some(1)).then_some(())
        }
    })
    .await;

    // The injected pod stays guarded: its sidecar cannot be swapped by UPDATE, and no ephemeral
    // container (which would share its network) is added; other updates pass.
    let mut sidecar_swap = pods_on.get("guarded").await.unwrap();
    for c in sidecar_swap.spec.as_mut().unwrap().containers.iter_mut() {
        if c.name == "mcp-warden" {
            c.image = Some("registry.example/not-the-sidecar:1".into());
        }
    }
    let err = pods_on
        .replace("guarded", &PostParams::default(), &sidecar_swap)
        .await
        .expect_err("the sidecar's image cannot be changed");
    assert!(
        err.to_string().contains("sidecar cannot be changed"),
        "{err}"
    );
    let err = pods_on
        .patch_ephemeral_containers(
            "guarded",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [
                {"name": "debugger", "image": "busybox", "command": ["sh"]}]}})),
        )
        .await
        .expect_err("an ephemeral container is refused on a guarded pod");
    assert!(err.to_string().contains("ephemeral container"), "{err}");
    pods_on
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .expect("an unrelated update of a guarded pod passes");
    // A pod that names its own container like the sidecar is not taken for an injected one.
    let err = create_pod_named_like_the_sidecar(&pods_on).await;
    assert!(err.contains("not the sidecar mcp-warden writes"), "{err}");
    let host_network: Pod = serde_json::from_value(json!({
        "metadata": {"name": "on-the-node", "labels": {"app": "jupyter-mcp"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "registry.example/app:1",
                 "ports": [{"name": "mcp", "containerPort": 8888}]}]}
    }))
    .unwrap();
    let err = pods_on
        .create(&PostParams::default(), &host_network)
        .await
        .expect_err("a selected hostNetwork pod is refused");
    assert!(err.to_string().contains("hostNetwork"), "{err}");

    // A Service that selects the guarded pod: its names and cluster IP become hosts the
    // sidecar accepts (DNS-rebinding protection), rendered into the ConfigMap.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &on);
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "jupyter"},
                "spec": {"selector": {"app": "jupyter-mcp"}, "ports": [{"port": 80, "targetPort": "mcp"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap();
    let hosts = wait_for("the Service's names in the rendered policy", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("jupyter-mcp-warden").await.ok()??;
            let doc: Value = serde_json::from_str(&cm.data?["policy.json"]).ok()?;
            let hosts = doc["transport"]["allowed_hosts"].as_array()?.clone();
            (!hosts.is_empty()).then_some(hosts)
        }
    })
    .await;
    for want in [
        format!("jupyter.{on}.svc"),
        format!("jupyter.{on}.svc.cluster.local"),
        ip,
    ] {
        assert!(hosts.contains(&json!(want)), "{want} in {hosts:?}");
    }

    // Isolation: the controller renders its own NetworkPolicy (a write the admission policy
    // lets through), and another that admits the upstream port is reported.
    policies
        .patch(
            "jupyter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"isolation": "NetworkPolicy"}})),
        )
        .await
        .unwrap();
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &on);
    wait_for("the controller's NetworkPolicy", 30, || {
        let nps = nps.clone();
        async move { nps.get_opt("jupyter-mcp-warden").await.ok().flatten() }
    })
    .await;
    nps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "allow-same-namespace"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let message = wait_for("IsolationIneffective", 30, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            s.conditions
                .iter()
                .find(|c| c.type_ == "IsolationIneffective" && c.status == "True")
                .map(|c| c.message.clone())
        }
    })
    .await;
    assert!(message.contains("allow-same-namespace"), "{message}");

    // Isolation turned off: the controller deletes its NetworkPolicy (and only its own).
    policies
        .patch(
            "jupyter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"isolation": "None"}})),
        )
        .await
        .unwrap();
    wait_gone(
        "the controller's NetworkPolicy to be deleted",
        &nps,
        "jupyter-mcp-warden",
        30,
    )
    .await;
    assert!(
        nps.get_opt("allow-same-namespace").await.unwrap().is_some(),
        "another NetworkPolicy is never touched"
    );

    // Deleting the policy: its ConfigMap goes by garbage collection (when the cluster runs a
    // garbage collector; a bare API server has none).
    policies
        .delete("jupyter", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_gone(
        "the ConfigMap to be garbage-collected",
        &cms,
        "jupyter-mcp-warden",
        60,
    )
    .await;

    env.cleanup().await;
}

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
    let first = include_str!("fixtures/identity/rsa-test-jwks.json").to_string();
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

/// An McpApproval as the controller makes it from a sidecar's report, for `policy` in `ns`.
fn approval_object(
    ns: &str,
    policy: &str,
    session: &str,
    requested_at: u64,
    ttl: u64,
) -> McpApproval {
    let arguments = format!("{{\"session_id\":\"{session}\"}}");
    let p = Pending {
        id: approval_id(
            &format!("{ns}/{policy}"),
            "clear_session",
            &mcp_warden::policy::sha256_hex(arguments.as_bytes()),
            "system:serviceaccount:agents:bot",
        ),
        policy: format!("{ns}/{policy}"),
        tool: "clear_session".into(),
        arguments_sha256: mcp_warden::policy::sha256_hex(arguments.as_bytes()),
        arguments: Some(arguments),
        identity: "system:serviceaccount:agents:bot".into(),
        requested_at,
        uses: 1,
        ttl_seconds: ttl,
        tool_label: String::new(),
    };
    mcp_warden::controller::approvals::new_approval(ns, policy, "bot-0", &p)
}

#[tokio::test]
async fn approvals_are_stamped_rendered_for_their_pod_and_deleted_after_the_retention() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "appr").await;
    let on = env.on.clone();
    let (_controller, _admin) = env
        .controller(&[
            "--approvals-poll-seconds",
            "1",
            "--approval-retention-seconds",
            "3",
        ])
        .await;
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(
        PolicyBuilder::new(&on, "interp")
            .spec(json!({"tools": {"clear_session": {"action": "require_approval"}}}))
            .manifest(),
    )
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    // The admin API's keys: the cluster's, naming the controller's ServiceAccount.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let admin = wait_for("admin.json in the ConfigMap", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("interp-mcp-warden").await.ok()??;
            cm.data?.get("admin.json").cloned()
        }
    })
    .await;
    let admin: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(
        admin["subject"],
        format!("system:serviceaccount:{}:mcp-warden", env.sys)
    );
    assert!(!admin["keys"].as_array().unwrap().is_empty());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let approvals: Api<McpApproval> = Api::namespaced(client.clone(), &on);
    let live = approval_object(&on, "interp", "default", now, 3600);
    let lapsed = approval_object(&on, "interp", "old", now - 7200, 3600);
    for a in [&live, &lapsed] {
        approvals.create(&PostParams::default(), a).await.unwrap();
    }
    // A decision with a forged decidedBy: the webhook stamps the real user.
    let decided = approvals
        .patch(
            &live.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "Approved", "decidedBy": "someone-else"}})),
        )
        .await
        .expect("the admin may approve");
    let by = decided.spec.decided_by.clone().unwrap();
    assert_ne!(by, "someone-else");
    assert!(decided.spec.decided_at.is_some());
    // Rendered for its pod, and its status moves on.
    let file = wait_for("approvals.json with the approval", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("interp-mcp-warden").await.ok()??;
            let text = cm.data?.get("approvals.json")?.clone();
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["approvals"].as_array()?.len() == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(file["approvals"][0]["id"], live.spec.approval_id.as_str());
    assert_eq!(file["approvals"][0]["pod"], "bot-0");
    assert_eq!(file["approvals"][0]["uses"], 1);
    let got = approvals.get(&live.name_any()).await.unwrap();
    assert_eq!(got.status.unwrap().phase, Some(ApprovalPhase::Approved));
    // The reconciler's later writes keep the approvals key (separate field managers).
    policies
        .patch(
            "interp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tools": {"list_sessions": {}}}})),
        )
        .await
        .unwrap();
    wait_for("the new render beside the approvals", 30, || {
        let cms = cms.clone();
        async move {
            let d = cms.get_opt("interp-mcp-warden").await.ok()??.data?;
            (d.get("policy.json")?.contains("list_sessions") && d.contains_key("approvals.json"))
                .then_some(())
        }
    })
    .await;
    // The lapsed request expires, and is deleted once the retention has passed.
    let name = lapsed.name_any();
    wait_for("the lapsed request Expired", 30, || {
        let approvals = approvals.clone();
        let name = name.clone();
        async move {
            let a = approvals.get(&name).await.ok()?;
            (a.status?.phase == Some(ApprovalPhase::Expired)).then_some(())
        }
    })
    .await;
    wait_gone("the expired McpApproval", &approvals, &name, 30).await;
    // A decision on it would have been refused; on the live one a change of decision is.
    let flip = approvals
        .patch(
            &live.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "Denied"}})),
        )
        .await
        .unwrap_err();
    assert!(flip.to_string().contains("is final"), "{flip}");
    env.cleanup().await;
}
