"""The user journey on a real control plane, in the order a user lives it:

helm install → the controller (two replicas, run by the pod runner as the chart's ServiceAccount
with the chart's flags) → a namespace opted in → deploy/examples' MCP Python Interpreter applied →
its ReplicaSet's pod injected → that pod run (the injected sidecar in front of the real
mcp-python-interpreter server) → a real Python SDK client denied, limited and shown a filtered
list as the McpPolicy says → an edit of the McpPolicy reaching the running sidecar through the
ConfigMap → metrics → the leader killed (HA) → the webhook down (failurePolicy: Fail) → the API
server restarted → helm upgrade with the monitoring objects → uninstall leaves only the CRD.

The tests run in file order and share one installation (the `world` fixture)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from podrunner import RunningPod, free_pod_ip, free_port, get_json, kubectl, run_pod, temp_dir

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MCP_WARDEN_BIN", "")
HELM = os.environ.get("MCP_WARDEN_HELM_CURRENT", "")
ROUTES = Path(os.environ.get("MCP_WARDEN_SERVICE_ROUTES", "/nonexistent"))
# The kubelet's ConfigMap sync period the pod runner keeps (a real kubelet's is about a minute).
SYNC_SECONDS = float(os.environ.get("MCP_WARDEN_SYNC_SECONDS", "1"))
NS, RELEASE, APP_NS = "mcp-warden", "mcp-warden", "sandbox"
EXAMPLE = ROOT / "deploy" / "examples" / "mcp-python-interpreter.yaml"
PROM_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


def helm(*args: str) -> str:
    p = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"helm {' '.join(args)}: {p.stderr}"
    return p.stdout


def wait(what: str, fn, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series of `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class World:
    """The installation and the processes the pod runner started."""

    def __init__(self) -> None:
        self.dir = temp_dir("mcp-warden-journey-")
        self.controllers: dict[str, RunningPod] = {}
        self.admin: dict[str, int] = {}
        self.webhook: dict[str, int] = {}
        self.app: RunningPod | None = None
        # The app pod's own address: the controller reaches its sidecar's admin port there.
        self.app_ip = free_pod_ip()
        self.proxy = f"http://{self.app_ip}:9480"
        self.proxy_admin = f"http://{self.app_ip}:9481"

    # -- the controller replicas ------------------------------------------------------------

    def kubeconfig_for(self, pod: str) -> Path:
        """Credentials a node would mount for the pod: a token bound to it, and the cluster CA
        from the namespace's kube-root-ca.crt (both issued by the API server)."""
        token = kubectl("create", "token", "mcp-warden", "-n", NS, "--duration", "2h",
                        "--bound-object-kind", "Pod", "--bound-object-name", pod).strip()
        ca = get_json("configmap", "-n", NS, "kube-root-ca.crt")["data"]["ca.crt"]
        server = json.loads(kubectl("config", "view", "--raw", "-o", "json"))["clusters"][0]["cluster"]["server"]
        path = self.dir / f"{pod}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {
                "server": server, "certificate-authority-data": base64.b64encode(ca.encode()).decode()}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c"}))
        return path

    def start_controller(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        ports = {p["containerPort"]: free_port() for p in container["ports"]}
        byname = {p["name"]: ports[p["containerPort"]] for p in container["ports"]}
        self.controllers[name] = run_pod(
            pod, {container["image"]: [BIN]}, self.dir / name, ports=ports,
            extra_env={"controller": {"KUBECONFIG": str(self.kubeconfig_for(name)),
                                      "MCP_WARDEN_LOG_FORMAT": "text",
                                      # Read the sidecars' tool lists every 2 s, not 30.
                                      "MCP_WARDEN_TOOLS_POLL_SECONDS": "2"}})
        self.admin[name], self.webhook[name] = byname["metrics"], byname["webhook"]
        self.write_routes()

    def write_routes(self) -> None:
        """The webhook Service's ClusterIP:port → the running replicas (its endpoints)."""
        svc = get_json("service", "-n", NS, f"{RELEASE}-webhook")
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "webhook")
        live = [f"127.0.0.1:{self.webhook[n]}" for n, p in self.controllers.items()
                if p.containers["controller"].process.poll() is None]
        ROUTES.write_text(f"{svc['spec']['clusterIP']}:{port} {' '.join(live)}\n")

    def ready(self, name: str) -> bool:
        return http_get(f"http://127.0.0.1:{self.admin[name]}/readyz")[0] == 200

    def controller_metrics(self, name: str) -> str:
        return http_get(f"http://127.0.0.1:{self.admin[name]}/metrics")[1]

    def leader(self) -> str:
        return get_json("lease", "-n", NS, f"{RELEASE}-leader")["spec"].get("holderIdentity", "")

    def stop(self) -> None:
        for p in [*self.controllers.values(), *([self.app] if self.app else [])]:
            p.kill()
        ROUTES.write_text("")


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.stop()
    for c, p in w.controllers.items():
        if p.containers["controller"].process.returncode not in (0, None, -9):
            sys.stderr.write(f"--- controller {c} ---\n{p.logs('controller')[-3000:]}\n")
    kubectl("delete", "namespace", APP_NS, "--ignore-not-found", "--wait=false", check=False)
    subprocess.run([HELM, "uninstall", RELEASE, "-n", NS], capture_output=True, timeout=120)


def mcp_pod() -> dict:
    pods = get_json("pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]
    return pods[0] if pods else {}


# -- 1. install ---------------------------------------------------------------------------------


def test_helm_install_with_default_values(world):
    # A namespace left terminating by an earlier run must be gone first.
    wait("earlier namespaces gone", lambda: not kubectl("get", "namespace", APP_NS, "--ignore-not-found").strip(), timeout=120)
    helm("install", RELEASE, str(ROOT / "charts" / "mcp-warden"), "-n", NS, "--create-namespace")
    crd = get_json("crd", "mcppolicies.mcpwarden.dev")
    assert crd["spec"]["names"]["shortNames"] == ["mcpp"]
    deploy = get_json("deployment", "-n", NS, RELEASE)
    assert deploy["spec"]["replicas"] == 2
    # The controller-manager runs the Deployment: two Pending pods (no scheduler).
    pods = wait("the controller's pods", lambda: (
        p := get_json("pods", "-n", NS, "-l", "app.kubernetes.io/name=mcp-warden")["items"]) and len(p) == 2 and p)
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "mcp-warden"
        world.start_controller(pod)
    for name in world.controllers:
        wait(f"controller {name} /readyz", lambda n=name: world.ready(n), timeout=90)
    assert world.leader() in world.controllers
    # The leader issued the webhook certificate and patched the chart's configurations.
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        wait(f"caBundle in {kind}", lambda k=kind: all(
            h["clientConfig"].get("caBundle") for h in get_json(k, RELEASE)["webhooks"]))
        for h in get_json(kind, RELEASE)["webhooks"]:
            assert h["clientConfig"]["service"]["name"] == f"{RELEASE}-webhook", "the chart's Service is used"


# -- 2. a guarded MCP server ------------------------------------------------------------------


def test_the_example_is_injected(world):
    kubectl("apply", "-f", str(EXAMPLE))
    policy = wait("the McpPolicy Ready", lambda: (
        p := get_json("mcpp", "-n", APP_NS, "python-interpreter")).get("status", {}).get("conditions")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) and p)
    assert policy["status"]["observedGeneration"] == policy["metadata"]["generation"]
    pod = wait("the ReplicaSet's pod", mcp_pod)
    names = [c["name"] for c in pod["spec"]["containers"]] + [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert "mcp-warden" in names, f"the pod was not injected: {names}"
    ann = pod["metadata"]["annotations"]
    assert ann["mcpwarden.dev/policy"] == f"{APP_NS}/python-interpreter"
    # PodSecurity `restricted` would admit the sidecar: check its securityContext as stored.
    sidecar = next(c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
                   if c["name"] == "mcp-warden")
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    ports = {p.get("name"): p["containerPort"] for p in sidecar["ports"]}
    assert ports["mcp"] == 9480
    cm = get_json("configmap", "-n", APP_NS, "python-interpreter-mcp-warden")
    assert json.loads(cm["data"]["policy.json"])["name"] == f"{APP_NS}/python-interpreter"
    wait("status counts the injected pod", lambda: (
        s := get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]).get("injectedPods") == 1
        and s.get("matchedPods") == 1)


def start_app(world) -> None:
    pod = mcp_pod()
    upstream = 8000  # the McpPolicy's upstream.port: where the server listens inside the pod
    peer = ROOT / "tests" / "peers" / "peer_server.py"
    work = world.dir / "workspace"
    work.mkdir(exist_ok=True)
    world.app = run_pod(
        pod, {c["image"]: [BIN] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
              if c["name"] == "mcp-warden"},
        world.dir / "app",
        stand_ins={"interpreter": [sys.executable, str(peer), "--kind", "interpreter",
                                   "--port", str(upstream), "--dir", str(work)]},
        pod_ip=world.app_ip, sync_seconds=SYNC_SECONDS)
    wait("the injected sidecar ready", lambda: http_get(f"{world.proxy_admin}/readyz")[0] == 200)


@contextlib.asynccontextmanager
async def client(world, token: str | None = None):
    from mcp import ClientSession
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http, \
            streamable_http_client(f"{world.proxy}/mcp", http_client=http) as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            yield s


async def call(s, name: str, args: dict | None = None) -> tuple[bool, str]:
    r = await s.call_tool(name, args or {})
    return bool(r.isError), (r.content[0].text if r.content else "")


async def call_meta(s, name: str, args: dict) -> tuple[bool, str, dict]:
    r = await s.call_tool(name, args)
    meta = getattr(r, "meta", None) or getattr(r, "_meta", None) or {}
    return bool(r.isError), (r.content[0].text if r.content else ""), meta.get("dev.mcpwarden/decision", {})


def sidecar_metrics(world) -> str:
    return http_get(f"{world.proxy_admin}/metrics")[1]


@pytest.mark.anyio
async def test_a_real_client_is_governed_by_the_policy(world):
    start_app(world)
    async with client(world) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"run_python_code", "write_file", "list_directory"} <= names
        assert "install_package" not in names, "a denied tool is not listed"
        assert "run_python_file" not in names, "a tool default: deny never allows is not listed"
        assert "clear_session" in names, "a tool that needs approval is listed"

        assert await call(s, "install_package", {"package_name": "x"}) == (True, "Package installs are disabled in this namespace")
        err, text = await call(s, "run_python_code", {"code": "print(6 * 7)"})
        assert not err and "42" in text
        for i in range(60):
            err, text = await call(s, "list_directory", {"directory_path": str(world.dir / "workspace")})
            assert not err, f"call {i}: {text}"
        err, text = await call(s, "list_directory", {"directory_path": str(world.dir / "workspace")})
        assert err and text.startswith("Rate limit exceeded: list_directory_rate allows 60 calls per minute"), text
    m = sidecar_metrics(world)
    policy = f"{APP_NS}/python-interpreter"
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="install_package", decision="deny") == 1
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="list_directory", decision="allow") == 60
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="list_directory", decision="rate_limited") == 1


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_the_policy_status_shows_the_servers_real_tools(world):
    """The controller reads what the running sidecar listed of the real MCP Python Interpreter
    into the McpPolicy status, and a misspelt rule shows up as UnknownTools with an Event."""
    status = wait("the server's tools in status", lambda: (
        s := get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]).get("observedToolCount") and s)
    names = [t["name"] for t in status["observedTools"]]
    assert {"run_python_code", "write_file", "clear_session", "install_package"} <= set(names), names
    assert status["observedToolCount"] == len(names) and names == sorted(names)
    assert all(t["hash"].startswith("sha256:") for t in status["observedTools"])
    assert status.get("toolsAllowedByDefault") == [], "default: deny lets nothing through unnamed"
    assert condition(status, "UnknownTools")["status"] == "False", status["conditions"]
    assert condition(status, "UnknownArguments")["status"] == "False", status["conditions"]
    assert condition(status, "ToolDefinitionChanged")["status"] == "False", status["conditions"]

    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"list_directorys": {}}}}))
    unknown = wait("UnknownTools for the misspelt rule", lambda: (
        c := condition(get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"], "UnknownTools"))
        .get("status") == "True" and c)
    assert "tools.list_directorys" in unknown["message"], unknown
    events = get_json("events", "-n", APP_NS, "--field-selector", "involvedObject.name=python-interpreter")["items"]
    assert any(e.get("reason") == "UnknownTools" and "list_directorys" in (e.get("message") or e.get("note") or "")
               for e in events), [(e.get("reason"), e.get("message")) for e in events]
    # The reconciler's own writes (the edit re-rendered the policy) left the tools fields alone.
    s = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]
    assert s["observedToolCount"] == status["observedToolCount"]
    assert condition(s, "Ready")["status"] == "True"
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"list_directorys": None}}}))
    wait("UnknownTools cleared", lambda: condition(
        get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"], "UnknownTools").get("status") == "False")


@pytest.mark.anyio
async def test_an_edit_reaches_the_running_sidecar_without_a_restart(world):
    before = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
    pid = world.app.containers["mcp-warden"].process.pid
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"read_file": {"action": "deny", "reason": "Reading is paused"}}}}))
    status = wait("the new render in status", lambda: (
        s := get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"])["policyHash"] != before and s)
    after = status["policyHash"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    # The pod runner syncs the ConfigMap like the kubelet (a ..data swap); the sidecar reloads.
    wait("the sidecar enforcing the new hash", lambda: metric(
        sidecar_metrics(world), "mcp_warden_policy_info", hash=after) == 1, timeout=60)
    assert world.app.containers["mcp-warden"].process.pid == pid and world.app.containers["mcp-warden"].process.poll() is None
    async with client(world) as s:
        assert await call(s, "read_file", {"file_path": "x"}) == (True, "Reading is paused")
    events = get_json("events", "-n", APP_NS, "--field-selector", "involvedObject.name=python-interpreter")["items"]
    assert any(e.get("reason") == "Rendered" for e in events), [e.get("reason") for e in events]


def impersonating_kubeconfig(world, user: str) -> Path:
    """The admin's kubeconfig acting as `user` (kubeconfig `as:`), as a person's would."""
    cfg = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
    for u in cfg["users"]:
        u["user"]["as"] = user
    path = world.dir / f"{user.replace(':', '_')}.kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


def plugin(world, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    """`kubectl mcp-warden ARGS`: the binary installed as the kubectl plugin, found on PATH."""
    bindir = world.dir / "plugins"
    bindir.mkdir(exist_ok=True)
    link = bindir / "kubectl-mcp_warden"
    if not link.exists():
        link.symlink_to(BIN)
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PATH=f"{bindir}:{os.environ['PATH']}")
    return subprocess.run([os.environ.get("MCP_WARDEN_KUBECTL", "kubectl"), "mcp-warden", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def approval_for(approval_id: str) -> dict:
    items = get_json("mcpa", "-n", APP_NS)["items"]
    return next((a for a in items if a["spec"]["approvalId"] == approval_id), {})


@pytest.mark.anyio
async def test_a_person_approves_an_agents_call(world):
    agent = f"system:serviceaccount:{APP_NS}:agent"
    kubectl("create", "serviceaccount", "agent", "-n", APP_NS)
    token = kubectl("create", "token", "agent", "-n", APP_NS, "--audience", "mcp-warden").strip()
    # alice approves; so could the agent's own ServiceAccount (a careless binding) — the webhook
    # still refuses it its own requests.
    kubectl("create", "rolebinding", "approvers", "-n", APP_NS, f"--clusterrole={RELEASE}-approver",
            "--user=alice", f"--serviceaccount={APP_NS}:agent")
    alice = impersonating_kubeconfig(world, "alice")
    args = {"session_id": "default"}
    async with client(world, token) as s:
        err, text, d = await call_meta(s, "clear_session", args)
        assert err and d["decision"] == "approval_required" and "needs a person's approval" in text, text
        approval_id = d["approvalId"]
        assert d["identity"] == agent
        # The controller reads the sidecar's admin API (with its own token) and makes an McpApproval.
        a = wait("the McpApproval", lambda: approval_for(approval_id), timeout=60)
        name = a["metadata"]["name"]
        assert (a["spec"]["tool"], a["spec"]["identity"], a["spec"]["pod"]) == ("clear_session", agent, mcp_pod()["metadata"]["name"])
        assert json.loads(a["spec"]["arguments"]) == args
        wait("phase Pending", lambda: get_json("mcpa", "-n", APP_NS, name).get("status", {}).get("phase") == "Pending")
        listed = plugin(world, alice, "approvals", "list", "-n", APP_NS)
        assert listed.returncode == 0 and name in listed.stdout and '{"session_id":"default"}' in listed.stdout, listed

        # The agent approving its own call: refused by the webhook, though RBAC would allow it.
        self_approval = subprocess.run(
            [os.environ.get("MCP_WARDEN_KUBECTL", "kubectl"), "--as", agent, "patch", "mcpa", "-n", APP_NS, name,
             "--type=merge", "-p", '{"spec":{"decision":"Approved"}}'], capture_output=True, text=True)
        assert self_approval.returncode != 0 and "cannot decide it" in self_approval.stderr, self_approval.stderr
        assert "decision" not in get_json("mcpa", "-n", APP_NS, name)["spec"]

        # alice approves with the kubectl plugin; decidedBy is hers whatever a client writes.
        started = time.monotonic()
        done = plugin(world, alice, "approve", name, "-n", APP_NS)
        assert done.returncode == 0 and "approved by alice" in done.stdout, (done.stdout, done.stderr)
        spec = get_json("mcpa", "-n", APP_NS, name)["spec"]
        assert (spec["decision"], spec["decidedBy"]) == ("Approved", "alice")
        # A decision is final.
        flip = plugin(world, alice, "reject", name, "-n", APP_NS)
        assert flip.returncode != 0 and "is final" in flip.stderr, (flip.stdout, flip.stderr)

        # The identical call runs once the approval reaches the sidecar.
        while True:
            err, text, d = await call_meta(s, "clear_session", args)
            if not err:
                break
            assert d.get("decision") == "approval_required", text
            assert time.monotonic() - started < 60, "the approval never reached the sidecar"
            await anyio_sleep(0.1)
        latency = time.monotonic() - started
        sys.stderr.write(f"approval to call: {latency:.2f} s (sync period {SYNC_SECONDS} s)\n")
        (world.dir.parent / "mcp-warden-approval-latency.txt").write_text(f"{latency:.2f}\n")
        # Once: the second identical call needs approval again; other arguments are another call.
        err, _, d = await call_meta(s, "clear_session", args)
        assert err and d["decision"] == "approval_required" and d["approvalId"] == approval_id
        err, _, d = await call_meta(s, "clear_session", {"session_id": "other"})
        assert err and d["decision"] == "approval_required" and d["approvalId"] != approval_id
    wait("phase Used", lambda: get_json("mcpa", "-n", APP_NS, name)["status"]["phase"] == "Used", timeout=30)
    events = get_json("events", "-n", APP_NS, "--field-selector", f"involvedObject.name={name}")["items"]
    assert {"Requested", "Approved", "Used"} <= {e.get("reason") for e in events}, [e.get("reason") for e in events]
    assert metric(sidecar_metrics(world), "mcp_warden_approvals_total", tool="clear_session", result="used") == 1

    # An approval that has expired allows nothing: a short ttl, approved, then waited out.
    before = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"clear_session": {"action": None, "approval": {"ttl": "20s"}}}}}))
    hash_ = wait("the new render", lambda: (
        h := get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]) != before and h)
    wait("the sidecar on the short ttl", lambda: metric(sidecar_metrics(world), "mcp_warden_policy_info", hash=hash_) == 1, timeout=60)
    async with client(world, token) as s:
        err, _, d = await call_meta(s, "clear_session", {"session_id": "later"})
        assert err and d["decision"] == "approval_required"
        late_approval = wait("the McpApproval", lambda: approval_for(d["approvalId"]), timeout=60)
        assert late_approval["spec"]["ttlSeconds"] == 20
        late = late_approval["metadata"]["name"]
        assert plugin(world, alice, "approve", late, "-n", APP_NS).returncode == 0
        wait("phase Approved", lambda: get_json("mcpa", "-n", APP_NS, late)["status"]["phase"] == "Approved", timeout=30)
        wait("phase Expired", lambda: get_json("mcpa", "-n", APP_NS, late)["status"]["phase"] == "Expired", timeout=60)
        err, _, d = await call_meta(s, "clear_session", {"session_id": "later"})
        assert err and d["decision"] == "approval_required", "an expired approval allows nothing"


async def anyio_sleep(seconds: float) -> None:
    import anyio
    await anyio.sleep(seconds)


def test_metrics_show_decisions_injections_and_reconciles(world):
    leader = world.leader()
    m = world.controller_metrics(leader)
    assert (metric(m, "mcp_warden_reconciliations_total", result="ok") or 0) >= 2
    hash_ = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
    assert metric(m, "mcp_warden_policy_rendered_info", policy=f"{APP_NS}/python-interpreter", hash=hash_) == 1
    injected = sum(metric(world.controller_metrics(n), "mcp_warden_injections_total", result="injected") or 0
                   for n in world.controllers)
    assert injected >= 1
    s = sidecar_metrics(world)
    assert (metric(s, "mcp_warden_policy_reloads_total", result="ok") or 0) >= 2, "the first load and the edit"


# -- 3. operations ------------------------------------------------------------------------------


def test_the_operator_panels_and_alerts_on_a_real_prometheus(world):
    """The dashboard's operator panels (and the policy-hash table) evaluated by a real
    Prometheus scraping both controller replicas and the injected sidecar, with new admissions
    made while it watches; no alert fires on this healthy installation."""
    sys.path.insert(0, str(ROOT / "tests" / "prometheus"))
    import promlib

    rules = promlib.render_rules(world.dir)
    pod_name = mcp_pod()["metadata"]["name"]
    targets = [(f"127.0.0.1:{port}", {"namespace": NS, "pod": name}) for name, port in world.admin.items()]
    targets.append((f"{world.app_ip}:9481", {"namespace": APP_NS, "pod": pod_name}))
    with promlib.prometheus(targets, rules) as prom:
        prom.wait_scraped()
        # The replicas are scraped at different instants, so a sum over them is extrapolated at
        # the end by up to one scrape interval of the window's average slope: 20 s of samples
        # before the admissions keep that under a tenth of a call.
        time.sleep(20)
        started = time.time() - 20
        # One pod the policy selects (injected) and one it does not (skipped).
        for name, app in (("panel-selected", "python-interpreter"), ("panel-other", "other")):
            kubectl("create", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": APP_NS, "labels": {"app": app}},
                "spec": {"containers": [{"name": "server", "image": "python:3.12-slim",
                                         "ports": [{"name": "mcp", "containerPort": 8000}]}]}}))
        before = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
        kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
                json.dumps({"spec": {"tools": {"list_sessions": {"action": "deny", "reason": "Paused"}}}}))
        rendered = wait("the new render", lambda: (
            h := get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]) != before and h)
        wait("the sidecar on it", lambda: metric(sidecar_metrics(world), "mcp_warden_policy_info", hash=rendered) == 1)
        prom.wait_scraped()
        at = float(prom.query("max(timestamp(mcp_warden_reconciliations_total))")[0]["value"][1])
        range_s = int(at - started) + 3
        checked = set()
        for panel in promlib.panels():
            for target in panel["targets"]:
                expr = promlib.substitute(target["expr"], range_s, rate_interval=f"{range_s}s")
                controller_only = any(m in target["expr"] for m in (
                    "injections", "admission", "reconcil", "certificate", "policy_rendered_info"))
                if not controller_only and panel["title"] != "Policy hash per pod vs rendered":
                    continue
                result = prom.query(expr, at=at)
                assert result, f"panel {panel['title']!r} returned nothing: {expr}"
                for series in result:
                    missing = promlib.legend_labels(target.get("legendFormat")) - set(series["metric"])
                    assert not missing, f"{panel['title']}: series without {missing}: {series}"
                values = {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}
                title = panel["title"]
                if title == "Injections":
                    made = {dict(k)["result"]: round(v * range_s) for k, v in values.items() if v > 0}
                    assert made == {"injected": 1, "skipped": 1}, made
                elif title == "Reconciliations and errors" and "duration" not in (target.get("legendFormat") or ""):
                    by = {dict(k)["result"]: v * range_s for k, v in values.items()}
                    assert by["ok"] >= 1 and by["error"] == 0 and by["invalid"] == 0, by
                elif title in ("Admission latency", "Reconciliations and errors"):
                    assert all(0 < v < 10 for v in values.values() if v == v), values
                    assert any(v == v for v in values.values()), f"{title}: every quantile is NaN"
                elif title == "Webhook certificate expires in":
                    expiry = min(float(r["value"][1]) for r in prom.query(
                        "mcp_warden_webhook_certificate_expiry_timestamp_seconds", at=at))
                    assert abs(list(values.values())[0] - (expiry - at)) < 1 and expiry - at > 86400 * 300
                elif title == "Policy hash per pod vs rendered":
                    hashes = {dict(k).get("hash") for k in values}
                    assert hashes == {rendered}, f"sidecar and controller agree on the hash: {values}"
                checked.add(title)
        assert checked >= {"Injections", "Admission latency", "Reconciliations and errors",
                           "Webhook certificate expires in", "Policy hash per pod vs rendered"}, checked
        firing = prom.query('ALERTS{alertstate="firing"}', at=at)
        assert firing == [], f"no alert fires on a healthy installation: {firing}"
    for name in ("panel-selected", "panel-other"):
        kubectl("delete", "pod", "-n", APP_NS, name, "--wait=false", check=False)


def test_the_lease_moves_when_the_leader_dies_and_work_continues(world):
    leader = world.leader()
    survivor = next(n for n in world.controllers if n != leader)
    duration = get_json("lease", "-n", NS, f"{RELEASE}-leader")["spec"]["leaseDurationSeconds"]
    world.controllers[leader].kill()
    world.write_routes()
    t0 = time.monotonic()
    wait("the survivor to take the Lease", lambda: world.leader() == survivor, timeout=duration * 3)
    took = time.monotonic() - t0
    assert took <= duration + 5, f"the Lease moved after {took:.1f}s (duration {duration}s)"
    # Reconciling continues on the survivor, and it still answers webhooks.
    before = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "json", "-p",
            json.dumps([{"op": "remove", "path": "/spec/tools/read_file/action"},
                        {"op": "remove", "path": "/spec/tools/read_file/reason"}]))
    wait("the survivor's render", lambda: get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"] != before)
    kubectl("scale", "deployment", "-n", APP_NS, "python-interpreter", "--replicas", "2")
    wait("a second injected pod", lambda: len([
        p for p in get_json("pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]
        if any(c["name"] == "mcp-warden" for c in p["spec"]["containers"] + p["spec"].get("initContainers", []))]) == 2)
    kubectl("scale", "deployment", "-n", APP_NS, "python-interpreter", "--replicas", "1")
    # The dead replica's pod is replaced, as the kubelet would restart it; it rejoins.
    world.start_controller(next(p for p in get_json("pods", "-n", NS, "-l", "app.kubernetes.io/name=mcp-warden")["items"]
                                if p["metadata"]["name"] == leader))
    wait("the restarted replica ready", lambda: world.ready(leader), timeout=90)
    assert world.leader() == survivor, "a returning replica does not take the Lease back"


def test_with_the_webhook_down_opted_in_namespaces_refuse_pods(world):
    for p in world.controllers.values():
        p.kill()
    world.write_routes()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "while-down", "labels": {"app": "python-interpreter"}},
           "spec": {"containers": [{"name": "a", "image": "registry.invalid/x:1", "ports": [{"name": "mcp", "containerPort": 8000}]}]}}
    p = subprocess.run([os.environ["MCP_WARDEN_KUBECTL"], "create", "-n", APP_NS, "-f", "-"],
                       input=json.dumps(pod), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, "a pod was admitted with the webhook down"
    assert "mcp-warden" in p.stderr and "failed calling webhook" in p.stderr, p.stderr
    kubectl("create", "namespace", "journey-plain")
    try:
        out = kubectl("create", "-n", "journey-plain", "-f", "-", input=json.dumps(pod))
        assert "created" in out, "namespaces that did not opt in are left alone"
    finally:
        kubectl("delete", "namespace", "journey-plain", "--wait=false")
    for pod in get_json("pods", "-n", NS, "-l", "app.kubernetes.io/name=mcp-warden")["items"]:
        world.start_controller(pod)
    for name in world.controllers:
        wait(f"controller {name} ready again", lambda n=name: world.ready(n), timeout=90)


def test_the_controller_catches_up_after_an_api_server_restart(world):
    run = Path(os.environ["KUBECONFIG"]).parent
    pid = int((run / "kube-apiserver.pid").read_text())
    os.kill(pid, 15)
    try:  # a graceful stop waits for open watches; a stop that takes too long is a crash
        wait("the API server to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
    except AssertionError:
        os.kill(pid, 9)
    time.sleep(3)  # the controllers see the connection drop
    up = subprocess.run([str(ROOT / "tests" / "cluster" / "up.sh")], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    before = get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"]
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"list_sessions": {"action": "deny", "reason": "after the restart"}}}}))
    wait("a render after the restart", lambda: get_json("mcpp", "-n", APP_NS, "python-interpreter")["status"]["policyHash"] != before,
         timeout=120)
    for name, p in world.controllers.items():
        assert p.containers["controller"].process.poll() is None, f"controller {name} exited"


# -- 4. upgrade and uninstall -----------------------------------------------------------------


def prometheus_operator_crds() -> list[Path]:
    """The prometheus-operator CRDs, from its Go module (the module proxy serves its source)."""
    out = subprocess.run(["go", "mod", "download", "-json", PROM_OPERATOR], capture_output=True, text=True,
                         timeout=300, cwd=ROOT / "tests" / "cluster")
    assert out.returncode == 0, out.stderr
    d = Path(json.loads(out.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return [d / f"monitoring.coreos.com_{k}.yaml" for k in ("servicemonitors", "podmonitors", "prometheusrules")]


def test_helm_upgrade_with_the_monitoring_objects(world):
    for f in prometheus_operator_crds():
        kubectl("apply", "--server-side", "-f", str(f))
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        wait(f"{crd} established", lambda c=crd: any(
            x["type"] == "Established" and x["status"] == "True"
            for x in get_json("crd", f"{c}.monitoring.coreos.com")["status"]["conditions"]))
    helm("upgrade", RELEASE, str(ROOT / "charts" / "mcp-warden"), "-n", NS, "--reuse-values",
         "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
         "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true")
    assert get_json("servicemonitor", "-n", NS, RELEASE)["spec"]["endpoints"]
    assert get_json("podmonitor", "-n", NS, f"{RELEASE}-sidecars")["spec"]["podMetricsEndpoints"]
    rules = get_json("prometheusrule", "-n", NS, RELEASE)["spec"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 9
    cms = get_json("configmap", "-n", NS, "-l", "grafana_dashboard=1")["items"]
    assert cms and any(k.endswith(".json") for k in cms[0]["data"])


def test_uninstall_leaves_only_the_crd(world):
    world.stop()
    kubectl("delete", "-f", str(EXAMPLE), "--wait=true", "--timeout=120s")
    helm("uninstall", RELEASE, "-n", NS, "--wait")

    def leftovers() -> list[str]:
        left = []
        for kind in ("configmaps", "secrets", "leases.coordination.k8s.io", "services", "deployments",
                     "serviceaccounts", "roles", "rolebindings", "networkpolicies", "events.events.k8s.io"):
            for o in get_json(kind, "-n", NS)["items"]:
                name = o["metadata"]["name"]
                if name in ("kube-root-ca.crt", "default") or kind.startswith("events"):
                    continue
                left.append(f"{kind}/{name}")
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations", "clusterroles",
                     "clusterrolebindings"):
            left += [f"{kind}/{o['metadata']['name']}" for o in get_json(kind)["items"]
                     if "mcp-warden" in o["metadata"]["name"]]
        return left

    with contextlib.suppress(AssertionError):
        wait("nothing of mcp-warden left (garbage collection)", lambda: not leftovers(), timeout=60)
    assert leftovers() == []
    assert get_json("crd", "mcppolicies.mcpwarden.dev"), "the CRD stays (Helm never deletes CRDs)"
