"""The attacker's probe, replayed with raw HTTP against the real mcp-warden binary in front of
real Python-SDK servers (whichever line this venv has). Each test first shows the server itself
would be fooled (directly), then that the sidecar is not."""

import contextlib
import json
import socket
import time

import httpx
import pytest
from conftest import ROOT, SDK_MAJOR, stack
from test_python_sdk import connect

POLICY = ROOT / "tests" / "fixtures" / "bypass-policy.yaml"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}


def messages(r):
    """The JSON-RPC messages of a JSON or SSE answer."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for event in r.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                out.append(json.loads(data))
        return out
    return [r.json()] if r.content else []


def session(client, url):
    """Initializes a session on `url`; returns the headers later requests carry."""
    r = client.post(url, headers=ACCEPT, json=INIT)
    assert r.status_code == 200, r.text
    h = dict(ACCEPT, **{"mcp-protocol-version": "2025-11-25"})
    if "mcp-session-id" in r.headers:
        h["mcp-session-id"] = r.headers["mcp-session-id"]
    client.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return h


def test_ids_servers_echo_differently_are_refused():
    with stack(json=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        h = session(c, s.direct)
        r = c.post(s.direct, headers=h, content='{"jsonrpc":"2.0","id":-0,"method":"tools/list"}')
        assert r.json()["id"] == 0, "the server echoes -0 as 0: an id filter would miss it"
        h = session(c, s.url)
        for id_ in ["-0", "9007199254740993"]:
            r = c.post(s.url, headers=h, content=f'{{"jsonrpc":"2.0","id":{id_},"method":"tools/list"}}')
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == -32600
        r = c.post(s.url, headers=h, json={"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
        names = [t["name"] for t in messages(r)[0]["result"]["tools"]]
        assert "notebook_read" in names and "debug_dump" not in names


def test_a_replayed_tool_list_is_filtered():
    with stack(event_store=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        for url, hidden_expected in [(s.direct, True), (s.url, False)]:
            h = session(c, url)
            r = c.post(url, headers=h, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            ids = [line[3:].strip() for line in r.text.replace("\r\n", "\n").split("\n") if line.startswith("id:")]
            assert ids, f"the server keeps events (ids on its SSE answer): {r.text[:300]}"
            # Resume that stream from its first event: the server replays what followed.
            with c.stream("GET", url, headers=dict(h, **{"accept": "text/event-stream", "last-event-id": ids[0]})) as g:
                seen = ""
                deadline = time.monotonic() + 5
                for chunk in g.iter_text():
                    seen += chunk
                    if '"tools"' in seen or time.monotonic() > deadline:
                        break
            if len(ids) > 1:
                assert '"tools"' in seen, f"the replay carries the list: {seen[:300]}"
            assert ("debug_dump" in seen) == (hidden_expected and len(ids) > 1), (url, seen[:500])


def test_bodies_on_other_methods_never_reach_the_legacy_endpoint():
    with stack(transport="sse", policy=POLICY) as s, httpx.Client(timeout=10) as c:
        with c.stream("GET", s.url, headers={"accept": "text/event-stream"}) as g:
            endpoint = None
            for line in g.iter_lines():
                if line.startswith("data:"):
                    endpoint = line[5:].strip()
                    break
            assert endpoint and endpoint.startswith("/")
            base = s.url.rsplit("/", 1)[0]
            call = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                               "params": {"name": "unlisted_tool", "arguments": {}}})
            for method in ["GET", "DELETE", "OPTIONS"]:
                r = c.request(method, base + endpoint, headers={"content-type": "application/json"}, content=call)
                assert r.status_code == 400, (method, r.status_code, r.text)
                assert "cannot carry a body" in r.json()["error"]["message"]


def test_dns_rebinding_is_refused_as_the_server_itself_would():
    with stack(json=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        for headers in [{"host": "evil.example.com"}, {"origin": "http://evil.example.com"}]:
            direct = c.post(s.direct, headers=dict(ACCEPT, **headers), json=INIT)
            via = c.post(s.url, headers=dict(ACCEPT, **headers), json=INIT)
            assert 400 <= direct.status_code < 500, (headers, direct.status_code)
            assert via.status_code == 403, (headers, via.status_code, via.text)
        assert c.post(s.url, headers=dict(ACCEPT, origin="http://localhost:6274"), json=INIT).status_code == 200


@pytest.mark.anyio
async def test_a_server_that_redirects_works_through_the_sidecar():
    # The server's endpoint is /mcp; an upstream configured as /mcp/ is redirected to it with
    # an absolute URL built from the Host the sidecar sent.
    with stack(policy=POLICY, upstream_path="/mcp/") as s:
        with httpx.Client(timeout=10) as c:
            r = c.post(s.url, headers=ACCEPT, json=INIT)
            if r.status_code in (307, 308):
                proxy_authority = s.url.split("/")[2]
                assert r.headers["location"].startswith(f"http://{proxy_authority}/"), r.headers["location"]
        async with connect(s.url, "streamable-http") as client:
            assert "debug_dump" not in await client.names()
            err, text, _ = await client.call("clear_session")
            assert (err, text) == (True, "Blocked by default. Requires approval.")
            err, text, _ = await client.call("notebook_read", {"path": "x"})
            assert (err, text) == (False, "read x")


@pytest.mark.anyio
async def test_json_text_in_a_string_is_judged_as_the_server_parses_it():
    with stack(json=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        calls = [("run_commands", {"commands": '["ls", "rm -rf /srv/x"]'}, "rm -rf /srv/x"),
                 ("configure", {"options": '{"mode": "dangerous"}'}, "mode=dangerous")]
        h = session(c, s.direct)
        for i, (tool, args, effect) in enumerate(calls):
            r = c.post(s.direct, headers=h, json={"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                                   "params": {"name": tool, "arguments": args}})
            text = messages(r)[0]["result"]["content"][0]["text"]
            assert effect in text, f"the server parses the string and runs it: {text}"
        h = session(c, s.url)
        for i, (tool, args, _) in enumerate(calls):
            r = c.post(s.url, headers=h, json={"jsonrpc": "2.0", "id": 20 + i, "method": "tools/call",
                                                "params": {"name": tool, "arguments": args}})
            result = messages(r)[0]["result"]
            assert result["isError"] is True, result
            assert result["_meta"]["dev.mcpwarden/decision"]["decision"] == "deny"


def test_envelope_keys_in_another_case_are_refused():
    with stack(json=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        h = session(c, s.url)
        body = '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run_commands","Arguments":{"commands":["rm -rf /"]}}}'
        r = c.post(s.url, headers=h, content=body)
        assert r.status_code == 400 and "ignoring case" in r.text, r.text


@pytest.mark.anyio
async def test_stalled_clients_do_not_lock_out_an_agent():
    args = ["--max-connections", "64", "--header-timeout-seconds", "2", "--body-timeout-seconds", "2"]
    with stack(policy=POLICY, sidecar_args=args) as s:
        host, port = s.url.split("/")[2].split(":")
        stalled = []
        for _ in range(16):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                         b"transfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n")
            stalled.append(sock)
        # Let those reach the sidecar as requests (inside a request, they are not evicted).
        time.sleep(0.5)
        for _ in range(300):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: loc")
            stalled.append(sock)
        try:
            async with connect(s.url, "streamable-http") as client:
                err, text, _ = await client.call("notebook_read", {"path": "y"})
                assert (err, text) == (False, "read y")
            stalled[0].settimeout(5)
            assert stalled[0].recv(64).startswith(b"HTTP/1.1 408"), "a stalled body is answered 408"
        finally:
            for sock in stalled:
                sock.close()


LIST = '{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"notebook_read"},{"name":"debug_dump"}]}}'


@contextlib.contextmanager
def stub(answers):
    """A plain HTTP server answering each POST with the next (content type, body, extra headers)
    of `answers`: what no SDK server sends, but a broken or hostile one could."""
    import http.server
    import threading

    queue = list(answers)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("user-agent", "").startswith("mcp-warden/"):
                # The sidecar's own listing of the server's tools: not one of the client's
                # requests the answers are queued for.
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            ctype, body, extra = queue.pop(0)
            self.send_response(200)
            self.send_header("content-type", ctype)
            for k, v in extra.items():
                self.send_header(k, v)
            if "content-length" not in extra:
                self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()


@contextlib.contextmanager
def sidecar_for(port):
    from conftest import BIN, free_port, running

    proxy, admin = free_port(), free_port()
    args = [BIN, "sidecar", "--policy", str(POLICY), "--upstream", f"http://127.0.0.1:{port}/mcp",
            "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}", "--drain-delay-seconds", "0"]
    with running(args, proxy, "mcp-warden sidecar"):
        yield f"http://127.0.0.1:{proxy}/mcp"


def sse(data):
    return f"event: message\ndata: {data}\n\n".encode()


def test_unreadable_lists_are_refused_on_sse_as_on_json_and_framing_is_recomputed():
    bad = [
        ("text/event-stream", sse(LIST.replace("debug_dump", "debug_dump\\ud800")), {}),
        ("text/event-stream", sse(LIST.replace('"id":7', '"id":7,"n":1e400')), {}),
        ("text/event-stream", sse("\ufeff" + LIST), {}),
        ("text/event-stream", sse(LIST.replace('"tools"', '"Tools"')), {}),
        ("application/json", LIST.replace("debug_dump", "debug_dump\\ud800").encode(), {}),
        ("text/event-stream", b"\x1f\x8b\x08\x00", {"content-encoding": "gzip"}),
    ]
    good_with_length = ("text/event-stream", sse(LIST), {})
    with stub(bad + [good_with_length]) as port, sidecar_for(port) as url, httpx.Client(timeout=10) as c:
        for ctype, body, extra in bad:
            r = c.post(url, headers=ACCEPT, json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
            assert "debug_dump" not in r.text, (body[:60], r.text)
            assert '"code":-32603' in r.text.replace(" ", ""), (body[:60], r.status_code, r.text)
        # The upstream's Content-Length was for the unfiltered stream: the client still gets a
        # whole, well-framed answer.
        r = c.post(url, headers=ACCEPT, json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
        tools = [t["name"] for t in messages(r)[0]["result"]["tools"]]
        assert tools == ["notebook_read"]
        assert r.headers.get("content-length") in (None, str(len(r.content)))


def test_absurd_session_ids_are_refused():
    with stack(json=True, policy=POLICY) as s, httpx.Client(timeout=10) as c:
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "notebook_read", "arguments": {}}}
        for sid in ["a" * 65536, "a" * 257]:
            r = c.post(s.url, headers=dict(ACCEPT, **{"mcp-session-id": sid}), json=call)
            assert r.status_code == 400, r.text
