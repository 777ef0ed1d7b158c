"""Loopback-only ICE: when the Realtime endpoint is on this machine (the emulator), gather 127.0.0.1 only.

aioice leaves 127.0.0.1 out of host candidates and offers every other interface address instead; offline that
both stalls nothing (no STUN is configured by default) and, worse, sends test traffic to addresses other than
loopback. aioice has no option for this, so we replace its address lookup, once, process-wide, behind a switch.
"""

from __future__ import annotations

from collections.abc import Callable

import aioice.ice

_original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
_loopback_only = False
_only_addresses: tuple[str, ...] = ()


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    # A worker's advertised addresses win over loopback-only: its embedded emulator asks for 127.0.0.1 (its
    # clients are local), but browsers on other machines join that same process's calls at those addresses.
    if _only_addresses:
        return [a for a in _only_addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
    if _loopback_only:
        return ["127.0.0.1"] if use_ipv4 else []
    return _original(use_ipv4, use_ipv6)


def set_host_addresses(addresses: list[str]) -> None:
    """Gather host candidates on these addresses only (a cluster worker's advertised one: browsers send it media
    there, and never to another interface of its machine); [] for every address again."""
    global _only_addresses
    _only_addresses = tuple(addresses)
    aioice.ice.get_host_addresses = _host_addresses


def set_loopback_only(enabled: bool) -> None:
    """Gather only 127.0.0.1 host candidates from now on (True) or the machine's addresses (False)."""
    global _loopback_only
    _loopback_only = enabled
    aioice.ice.get_host_addresses = _host_addresses


def loopback_only() -> bool:
    return _loopback_only


def is_local_url(url: str) -> bool:
    """True when a base URL points at this machine (so both sides of a leg should stay on loopback)."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")
