"""Starts a real Python-SDK MCP server for the sidecar's peer tests.

--kind notebook: a server with the tools the test policy names, on whichever SDK line this
interpreter has (1.x FastMCP or 2.x MCPServer). --kind interpreter: the published MCP Python
Interpreter server (PyPI mcp-python-interpreter), whose entry point speaks stdio only, so its
FastMCP object is imported and run over HTTP here.
"""

import argparse
import sys

p = argparse.ArgumentParser()
p.add_argument("--kind", choices=["notebook", "interpreter"], default="notebook")
p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
p.add_argument("--port", type=int, required=True)
p.add_argument("--json", action="store_true", help="JSON replies instead of SSE")
p.add_argument("--stateless", action="store_true", help="no sessions")
p.add_argument("--dir", default=".", help="interpreter working directory")
p.add_argument("--event-store", action="store_true", help="keep events for Last-Event-ID replays")
a = p.parse_args()

if a.kind == "interpreter":
    # The interpreter reads its own arguments at import time.
    sys.argv = [sys.argv[0], "--dir", a.dir]
    from mcp_python_interpreter.server import mcp as server

    server.settings.host = "127.0.0.1"
    server.settings.port = a.port
    server.settings.json_response = a.json
    server.settings.stateless_http = a.stateless
    server.run(transport=a.transport)
    sys.exit(0)

try:
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver import MCPServer as Server

    LINE = 2
except ImportError:
    from mcp.server.fastmcp import Context
    from mcp.server.fastmcp import FastMCP as Server

    LINE = 1

from mcp.server.streamable_http import EventMessage, EventStore  # noqa: E402
from mcp.types import ToolAnnotations  # noqa: E402
from pydantic import BaseModel  # noqa: E402


class MemoryStore(EventStore):
    """Every event in memory, so a client can resume a stream with Last-Event-ID."""

    def __init__(self):
        self.events = []  # (event id, stream id, message or None for a priming event)

    async def store_event(self, stream_id, message):
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        ids = [e[0] for e in self.events]
        if last_event_id not in ids:
            return None
        at = ids.index(last_event_id)
        stream = self.events[at][1]
        for event_id, stream_id, message in self.events[at + 1:]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


store = MemoryStore() if a.event_store else None
server = Server("notebook", event_store=store) if LINE == 1 else Server("notebook")


class Options(BaseModel):
    mode: str = "safe"


# MCP annotations, for policies with `categories`: notebook_read is read-only, run_cell changes
# state but destroys nothing and stays inside, delete_all says it is destructive; the others set
# none (so count as destructive and open-world).
@server.tool(annotations=ToolAnnotations(destructiveHint=False, openWorldHint=False))
def run_cell(code: str = "") -> str:
    """Run a notebook cell."""
    return f"ran {code!r}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
def notebook_read(path: str = "") -> str:
    """Read a notebook."""
    return f"read {path}"


@server.tool()
def clear_session() -> str:
    """Clear the session."""
    return "cleared"


@server.tool()
def debug_dump() -> str:
    """A tool the policy hides."""
    return "secrets"


@server.tool()
def write_file(path: str, size: int = 0) -> str:
    """Write a file; size is an integer the server coerces from a numeric string."""
    return f"wrote {path} size={size!r} type={type(size).__name__}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_all() -> str:
    """Destructive."""
    return "deleted"


@server.tool()
async def ask_roots(ctx: Context) -> str:
    """Asks the client for its roots: a server-to-client request travelling through the sidecar."""
    result = await ctx.session.list_roots()
    return ",".join(str(r.uri) for r in result.roots)


@server.tool()
def run_commands(commands: list[str]) -> str:
    """Runs shell commands (it only echoes them); FastMCP parses a JSON string into the list."""
    return "would run " + "; ".join(commands)


@server.tool()
def configure(options: Options) -> str:
    """Takes a model; FastMCP parses a JSON string into it."""
    return f"mode={options.mode}"


@server.tool()
def unlisted_tool() -> str:
    """Named by no rule: denied by default."""
    return "unlisted"


if LINE == 2:
    kwargs = {"host": "127.0.0.1", "port": a.port}
    if a.transport == "streamable-http":
        kwargs.update(json_response=a.json, stateless_http=a.stateless, event_store=store)
    server.run(transport=a.transport, **kwargs)
else:
    server.settings.host = "127.0.0.1"
    server.settings.port = a.port
    server.settings.json_response = a.json
    server.settings.stateless_http = a.stateless
    server.run(transport=a.transport)
