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

server = Server("notebook")


@server.tool()
def run_cell(code: str = "") -> str:
    """Run a notebook cell."""
    return f"ran {code!r}"


@server.tool()
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


@server.tool()
def delete_all() -> str:
    """Destructive."""
    return "deleted"


@server.tool()
async def ask_roots(ctx: Context) -> str:
    """Asks the client for its roots: a server-to-client request travelling through the sidecar."""
    result = await ctx.session.list_roots()
    return ",".join(str(r.uri) for r in result.roots)


@server.tool()
def unlisted_tool() -> str:
    """Named by no rule: denied by default."""
    return "unlisted"


if LINE == 2:
    kwargs = {"host": "127.0.0.1", "port": a.port}
    if a.transport == "streamable-http":
        kwargs.update(json_response=a.json, stateless_http=a.stateless)
    server.run(transport=a.transport, **kwargs)
else:
    server.settings.host = "127.0.0.1"
    server.settings.port = a.port
    server.settings.json_response = a.json
    server.settings.stateless_http = a.stateless
    server.run(transport=a.transport)
