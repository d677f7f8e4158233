"""Peak memory of the sidecar binary under hostile bodies: the worst case the chart's default
memory limit must hold. Starts a stub upstream and the real binary, measures VmHWM (peak RSS)
idle, per half-open connection, after N concurrent 4 MiB bodies of ~390,000 keys to a tool whose
rule reads its arguments, and how long a connection that never finishes its headers is kept.
Prints one line per figure.

    python3 benches/hostile_memory.py [--bin target/release/mcp-warden] [--concurrency 4]
"""

import argparse
import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICY = """version: "1"
default: deny
tools:
  run_cell:
    deny_if:
      - conditions: [{path: args.code, op: contains, value: "rm -rf"}]
        on_deny: no
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def status(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    return 0


def hostile_body(target=4 << 20):
    # ~10.7 bytes per key: "k123456":0,
    keys = []
    size = 0
    i = 0
    while size < target - 200:
        k = f'"k{i}":0'
        keys.append(k)
        size += len(k) + 1
        i += 1
    args = "{" + ",".join(keys) + "}"
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_cell","arguments":' + args + "}}"
    return body.encode(), i


def post(port, body):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"accept: application/json, text/event-stream\r\n"
              + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    data = s.recv(65536)
    s.close()
    return data.split(b" ", 2)[1].decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "mcp-warden"))
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-connections", type=int, default=3000)
    a = ap.parse_args()
    up_port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), Upstream)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    policy = Path(tmp) / "policy.yaml"
    policy.write_text(POLICY)
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([a.bin, "sidecar", "--policy", str(policy), "--upstream", f"http://127.0.0.1:{up_port}/mcp",
                             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                             "--log", "warn", "--max-connections", str(a.idle_connections + 100)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)
        print(f"idle: peak RSS {status(proc.pid, 'VmHWM') / 1024:.1f} MiB")
        rss_before = status(proc.pid, "VmRSS")
        socks = []
        for _ in range(a.idle_connections):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /mcp HTTP/1.1\r\nhost: loc")
            socks.append(s)
        time.sleep(1)
        rss_after = status(proc.pid, "VmRSS")
        print(f"{a.idle_connections} half-open connections: {(rss_after - rss_before) * 1024 / a.idle_connections / 1024:.1f} KiB each")
        for s in socks:
            s.close()
        # A slowloris connection: how long until the sidecar drops it (the header timeout).
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /mcp HTTP/1.1\r\nhost: loc")
        t0 = time.monotonic()
        s.settimeout(120)
        s.recv(1)
        print(f"a connection that never finishes its headers is closed after {time.monotonic() - t0:.1f} s")
        s.close()
        body, keys = hostile_body()
        for _ in range(a.rounds):
            with ThreadPoolExecutor(a.concurrency) as ex:
                codes = list(ex.map(lambda _: post(port, body), range(a.concurrency)))
        print(f"{a.concurrency} concurrent {len(body) / 2**20:.1f} MiB bodies of {keys} keys (answers {sorted(set(codes))}): "
              f"peak RSS {status(proc.pid, 'VmHWM') / 1024:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        srv.shutdown()


if __name__ == "__main__":
    main()
