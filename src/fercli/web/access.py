"""Who may see fer live's page: the socket it listens on, the Host names it answers, and the
token a page served beyond this machine needs.

A camera stream must not be readable by any web page the user happens to open: bound to a
loopback address, the page answers only requests whose Host header names that address (a
DNS-rebinding page sends its own name); bound to any other address, which needs an explicit
allow_remote, every request must carry a random token, given in the printed URL and kept by
the browser as a cookie. Library code: no printing, no web framework.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field

from fercli.core.errors import FerError

# The cookie that carries the token after the first visit with ?token=...
TOKEN_COOKIE = "fer_live_token"
# http's own port, which browsers leave out of the Host header (http://localhost/).
HTTP_PORT = 80


@dataclass(frozen=True)
class Access:
    """How requests are checked: the Host headers answered (lower case, with the port, and on
    port 80 without it too; None: any, then the token guards), and the token every request
    must carry (None: none needed)."""

    hosts: frozenset[str] | None
    token: str | None = None
    # URLs that open the page: where it is served and, for a remote bind, from elsewhere.
    urls: list[str] = field(default_factory=list)

    def host_allowed(self, host: str | None) -> bool:
        return self.hosts is None or (host or "").lower() in self.hosts

    def token_allowed(self, offered: str | None) -> bool:
        if self.token is None:
            return True
        # compare_digest: the time taken tells nothing of how much of a guess was right.
        return offered is not None and hmac.compare_digest(
            offered.encode("utf-8", "surrogateescape"), self.token.encode()
        )


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int, allow_remote: bool = False):
    """A listening TCP socket on host:port. FerError (one line) if the port is taken, or if
    the address is not a loopback one (every interface: "", "0", "0.0.0.0", "::") and
    allow_remote is not given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError, UnicodeError) as error:
        sock.close()
        if getattr(error, "errno", None) == 98 or "in use" in str(error):
            raise FerError(
                f"port {port} on {host} is in use (choose another with --port)"
            ) from None
        reason = getattr(error, "strerror", None) or str(error)
        raise FerError(f"cannot listen on {host!r} port {port}: {reason}") from None
    bound = sock.getsockname()[0]
    if not is_loopback(bound) and not allow_remote:
        sock.close()
        shown = f"--host {host}" if host.strip() else "an empty --host"
        raise FerError(
            f"{shown} serves the page (and the camera) on {bound}, beyond this machine: "
            "pass --allow-remote to mean it (every request then needs the printed token)"
        )
    sock.listen(64)
    sock.setblocking(False)
    return sock


def access_for(sock) -> Access:
    """The Access of a bound socket: a loopback one answers its own Host names; any other a
    random token (in the URLs)."""
    address, port = sock.getsockname()[:2]
    if is_loopback(address):
        shown = f"[{address}]" if ":" in address else address
        hosts = {"127.0.0.1", "localhost", "[::1]", shown}
        names = {f"{host}:{port}" for host in hosts}
        if port == HTTP_PORT:  # a browser leaves the scheme's own port out of the Host header
            names |= hosts
        return Access(frozenset(names), None, [f"http://{shown}:{port}/"])
    token = secrets.token_urlsafe(24)
    wildcard = ipaddress.ip_address(address.split("%")[0]).is_unspecified
    if wildcard:  # http://0.0.0.0/ does not open: here and from elsewhere, by this host's name
        local = "[::1]" if ":" in address else "127.0.0.1"
        hosts = [local, socket.gethostname()]
    else:
        hosts = [f"[{address}]" if ":" in address else address]
    return Access(None, token, [f"http://{host}:{port}/?token={token}" for host in hosts])
