"""Free loopback ports for the Python test harnesses (peers, conformance)."""

import random
import socket

_issued = set()


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768+), never handed out twice: a
    port the kernel picks for us could be taken as the source port of an outgoing connection
    before the server we start binds it ("Address already in use")."""
    while True:
        port = random.randint(20000, 32000)
        if port in _issued:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _issued.add(port)
        return port
