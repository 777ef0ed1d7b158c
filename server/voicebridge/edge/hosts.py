"""Which `Host` names a server answers to: the defence against DNS rebinding.

A page on `http://evil.example:8080` whose name the attacker re-points at 127.0.0.1 is, to the browser, the
same origin as the server it now reaches: same-origin checks and CORS do not stop it, and a local server
without a token would do whatever it asks. What does tell it apart is the `Host` header: the browser sends the
page's name (`evil.example:8080`). So a server answers only to the names it was started for:

* bound to loopback (127.0.0.0/8, ::1, localhost): 127.0.0.1, localhost, ::1 and the bound address;
* bound to one address or name: that one (the configured name);
* bound to every interface (0.0.0.0, ::): the loopback names, this machine's host names, and any IP address
  literal (a rebinding attack needs a DNS name; a browser that sends an address reached the server by it);
* plus every `--allowed-host NAME`.

Only the name is compared, not the port (the name is what an attacker controls). A request without a `Host`
header is not from a browser and passes; a malformed one is refused like a foreign one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
MAX_HOST_CHARS = 255
# A DNS name (labels of letters, digits, hyphens, underscores), or an IP literal (checked by ipaddress).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class HostConfigError(ValueError):
    """An `--allowed-host` value that is not a host name; the message says what to give."""


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback_name(host: str) -> bool:
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name in a `Host` header value (lower case, no port, no brackets, no final dot), None if malformed."""
    if not header or len(header) > MAX_HOST_CHARS or not header.isascii():
        return None
    try:
        parts = urlsplit(f"//{header}")
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number in range)
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    if parts.username is not None or parts.path or parts.query or parts.fragment or not name:
        return None
    if header.startswith("["):
        return name if ":" in name and is_ip_literal(name) else None
    return name if _NAME.match(name) or is_ip_literal(name) else None


def allowed_host_name(value: str) -> str:
    """Check an `--allowed-host` value: a bare host name or IP address. Raises HostConfigError."""
    name = value.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or not (_NAME.match(name) or is_ip_literal(name)):
        raise HostConfigError(
            f"--allowed-host {value[:80]!r} is not a host name: give a name such as voicebridge.example or an "
            "IP address, without scheme, port, path or wildcard"
        )
    return name


@dataclass(frozen=True)
class HostPolicy:
    """The names a server answers to (see the module docstring); `any_ip`: every IP literal too."""

    names: frozenset[str] = LOOPBACK_NAMES
    any_ip: bool = False

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True  # not a browser: browsers always send Host
        name = host_name(header)
        if name is None:
            return False
        return name in self.names or (self.any_ip and is_ip_literal(name))

    def refusal(self, header: str, flag: str) -> str:
        """Why a request with this Host header is refused, and what to do if the name is really ours."""
        name = host_name(header)
        known = ", ".join(sorted(self.names)) + (" and any IP address" if self.any_ip else "")
        if name is None:
            return f"the Host header {header[:80]!r} is not a host name[:port]; this server answers to {known}"
        return (
            f"this server does not answer to the host name {name[:80]!r} (it answers to {known}); a page on "
            f"another name reaching it may be a DNS-rebinding attack. If {name[:80]!r} really is this server, "
            f"start it with `{flag} {name[:80]}`"
        )


def machine_names() -> set[str]:
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:  # a resolver problem must not stop the server starting
        pass
    return {n.lower().rstrip(".") for n in names if n}


def host_policy(bind_host: str, extra: Iterable[str] = ()) -> HostPolicy:
    """The names a server listening on `bind_host` answers to, plus `extra` (`--allowed-host`, checked)."""
    names = {allowed_host_name(x) for x in extra}
    bind = bind_host.strip().strip("[]").lower().rstrip(".")
    if bind in WILDCARD_BINDS:
        return HostPolicy(frozenset(names | LOOPBACK_NAMES | machine_names()), any_ip=True)
    if is_loopback_name(bind):
        names |= LOOPBACK_NAMES
    names.add(bind)
    return HostPolicy(frozenset(names))
