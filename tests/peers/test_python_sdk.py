"""The official Python SDK (whichever line this venv has) as client and server, with the real
mcp-warden sidecar between them, on streamable HTTP (JSON and SSE replies, with and without
sessions) and on the legacy HTTP+SSE transport."""

import contextlib
import re

import pytest
from conftest import SDK_MAJOR, stack

MODES = [
    pytest.param(("streamable-http", False, False), id="streamable-sse-stateful"),
    pytest.param(("streamable-http", True, False), id="streamable-json-stateful"),
    pytest.param(("streamable-http", True, True), id="streamable-json-stateless"),
    pytest.param(("streamable-http", False, True), id="streamable-sse-stateless"),
    pytest.param(("sse", False, False), id="legacy-sse"),
]


ROOT_URI = "file:///workspace/project"


async def list_roots(_context):
    from mcp import types

    return types.ListRootsResult(roots=[types.Root(uri=ROOT_URI, name="project")])


@contextlib.asynccontextmanager
async def connect(url, transport):
    """A connected client with `names()` and `call()`, on either SDK line. It answers the
    server's roots/list requests."""
    if SDK_MAJOR >= 2:
        from mcp import Client

        server = url
        if transport == "sse":
            from mcp.client.sse import sse_client

            server = sse_client(url)
        async with Client(server, list_roots_callback=list_roots) as c:
            yield Adapter(c)
    else:
        from mcp import ClientSession

        if transport == "sse":
            from mcp.client.sse import sse_client

            cm = sse_client(url)
        else:
            from mcp.client.streamable_http import streamable_http_client

            cm = streamable_http_client(url)
        async with cm as streams:
            async with ClientSession(streams[0], streams[1], list_roots_callback=list_roots) as s:
                await s.initialize()
                yield Adapter(s)


class Adapter:
    def __init__(self, c):
        self.c = c

    async def names(self):
        out, cursor = [], None
        while True:
            if SDK_MAJOR >= 2:
                r = await self.c.list_tools(cursor=cursor) if cursor else await self.c.list_tools()
            else:
                r = await self.c.list_tools(cursor=cursor)
            out += [t.name for t in r.tools]
            cursor = r.next_cursor if hasattr(r, "next_cursor") else r.nextCursor
            if not cursor:
                return out

    async def call(self, name, args=None):
        r = await self.c.call_tool(name, args or {})
        text = r.content[0].text if r.content else ""
        is_error = r.is_error if hasattr(r, "is_error") else r.isError
        meta = getattr(r, "meta", None)
        if meta is None:
            meta = getattr(r, "_meta", None)
        return bool(is_error), text, meta or {}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_every_rule_acts_through_the_sidecar(mode):
    transport, json, stateless = mode
    with stack(transport=transport, json=json, stateless=stateless) as s:
        async with connect(s.url, transport) as c:
            assert sorted(await c.names()) == ["ask_roots", "notebook_read", "run_cell", "write_file"]

            err, text, _ = await c.call("notebook_read", {"path": "/workspace/a.ipynb"})
            assert (err, text) == (False, "read /workspace/a.ipynb")

            err, text, meta = await c.call("clear_session")
            assert (err, text) == (True, "Blocked by default. Requires approval.")
            assert meta["dev.mcpwarden/decision"]["rule"] == "tools.clear_session.deny_if[0]"
            err, text, _ = await c.call("delete_all")
            assert (err, text) == (True, "Destructive tools are disabled in this namespace")
            err, text, _ = await c.call("debug_dump")
            assert (err, text) == (True, "Unknown tool: debug_dump")

            # A numeric string: the Python server coerces it, so the sidecar must read it as a number.
            err, text, _ = await c.call("write_file", {"path": "/workspace/x", "size": "10"})
            assert (err, text) == (False, "wrote /workspace/x size=10 type=int")
            err, text, _ = await c.call("write_file", {"path": "/workspace/x", "size": "5000"})
            assert (err, text) == (True, "Files over 1000 bytes need approval")
            err, text, _ = await c.call("write_file", {"path": "/workspace/../etc/passwd"})
            assert err and text.startswith("argument validation failed")

            for i in range(5):
                err, text, _ = await c.call("run_cell", {"code": str(i)})
                assert (err, text) == (False, f"ran '{i}'")
            err, text, meta = await c.call("run_cell", {"code": "5"})
            assert err and text.startswith("Rate limit exceeded: run_cell_rate allows 5 calls per minute")
            assert meta["dev.mcpwarden/decision"]["counter"] == "run_cell_rate"

        metrics = s.metrics()
        assert re.search(r'mcp_warden_decisions_total\{decision="allow",policy="notebook-policy",tool="run_cell"\} 5', metrics)
        assert re.search(r'mcp_warden_decisions_total\{decision="rate_limited",policy="notebook-policy",tool="run_cell"\} 1', metrics)
        assert re.search(r'mcp_warden_limit_hits_total\{counter="run_cell_rate",policy="notebook-policy",scope="grant",window="minute"\} 1', metrics)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", [m for m in MODES if not m.values[0][2]])
async def test_server_to_client_requests_pass_through(mode):
    """The server asks the client for its roots mid-call; the question and the answer both
    cross the sidecar (on the POST's event stream, or the legacy session stream)."""
    if SDK_MAJOR >= 2:
        pytest.skip("the 2.x line speaks 2026-07-28, which has no server-initiated requests "
                    "(servers ask through input_required results, ordinary responses)")
    transport, json, stateless = mode
    with stack(transport=transport, json=json, stateless=stateless) as s:
        async with connect(s.url, transport) as c:
            err, text, _ = await c.call("ask_roots")
            assert (err, text) == (False, ROOT_URI)
