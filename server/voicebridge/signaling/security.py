"""The signaling server's guards: the Host names it answers to, the management token, per-client rate limits
and the CORS policy.

* Host names (every route: the API, the WebSockets, the console's files). A page on a name rebound to
  127.0.0.1 is same-origin to the browser, so on loopback without a token it could drive the whole API (start
  calls that spend money, read transcripts, take over). Its requests carry its own name in `Host`, so they are
  refused with 421 Misdirected Request unless the name is one the server was started for (edge/hosts.py:
  127.0.0.1, localhost and ::1 on loopback, the configured name elsewhere, plus `--allowed-host`). 421 rather
  than 403: the request is not forbidden to someone, it was sent to a name this server does not serve (RFC
  9110 15.5.20), and it stays distinct from the 403 of a refused cross-origin request. A header that is not
  valid UTF-8 is refused first with 400 (edge/headers.py).

* Management token. Off loopback anyone on the network could start calls (each one spends API money) or
  read transcripts, so every /api/ route then needs `Authorization: Bearer <VOICEBRIDGE_ADMIN_TOKEN>` and
  `serve` refuses to start without one (`policy_for_serve`). On loopback it is optional; when set it is
  required there too. GET /metrics needs it as well (it says how busy the server is). Browser join
  endpoints keep their own signed join tokens (join.py): a join token is not a management token and a
  management token is not a join token (it is stripped before the handler so an operator's hang-up stays
  the operator's). The events WebSocket may carry it as `?access_token=` because browsers cannot set
  headers on a WebSocket.
* Rate limits. Call creation and joins (plus join-token minting) are limited per client IP with a token
  bucket: 429 with Retry-After beyond it. The table of clients is bounded.
* CORS. No wildcard, ever: a request with an `Origin` that is neither this server's own origin nor on the
  allow-list (`serve --allow-origin`) is refused with 403 before it does anything (that also stops cross-site
  WebSocket hijacking and blind cross-site POSTs, which browsers send without a preflight). Allowed origins
  get their own origin echoed back, with Vary: Origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from voicebridge.edge.headers import undecodable_header
from voicebridge.edge.hosts import HostConfigError, HostPolicy, host_policy

from .http import error_body, json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN_TOKEN_ENV = "VOICEBRIDGE_ADMIN_TOKEN"
MIN_TOKEN_CHARS = 16  # a management token guards real money; a short one is a mistake
MAX_CLIENTS = 10_000  # buckets kept; the oldest idle client is forgotten beyond this (memory stays bounded)
MAX_ORIGIN_CHARS = 256

# Routes a browser reaches with a join token (join.py), not the management token.
_JOIN_TOKEN_ROUTE = re.compile(r"^/api/calls/[^/]+/(join|handback|leave|hangup)$")
_EVENTS_ROUTE = re.compile(r"^/api/calls/[^/]+/events$")
_CALL_CREATE = re.compile(r"^/api/calls/?$")
_JOIN_ROUTE = re.compile(r"^/api/calls/[^/]+/(join|tokens)$")
# Metrics tell how busy the server is and what calls cost: the management token guards them too (Prometheus
# sends it with `authorization: {credentials: <token>}` in its scrape config). /healthz, /readyz stay open.
_GUARDED_OUTSIDE_API = frozenset({"/metrics"})


class SecurityConfigError(ValueError):
    """The server's security settings are unusable; the message says what to set."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `burst` requests at once, refilled at `per_s` requests per second."""

    burst: int
    per_s: float

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_s > 0:
            raise SecurityConfigError(f"a rate limit needs burst >= 1 and a positive rate, got {self}")


class TokenBuckets:
    """One bucket per client key (an IP address); LRU-bounded so a flood of addresses cannot grow it."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.limit.per_s
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class SecurityPolicy:
    admin_token: str | None = field(default=None, repr=False)
    allowed_origins: frozenset[str] = frozenset()
    hosts: HostPolicy = field(default_factory=HostPolicy)  # the loopback names, as `serve` on 127.0.0.1
    call_rate: RateLimit = RateLimit(burst=20, per_s=0.5)  # generous for people, a wall for scripts
    join_rate: RateLimit = RateLimit(burst=60, per_s=2.0)

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < MIN_TOKEN_CHARS:
            raise SecurityConfigError(
                f"{ADMIN_TOKEN_ENV} is too short ({len(self.admin_token)} characters; use at least "
                f"{MIN_TOKEN_CHARS}, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        for origin in self.allowed_origins:
            if normalize_origin(origin) != origin:
                raise SecurityConfigError(
                    f"allowed origin {origin!r} must be scheme://host[:port] exactly (no path, no wildcard)"
                )


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case, or None when it is not an origin (a wildcard, a path, junk)."""
    if len(origin) > MAX_ORIGIN_CHARS or "*" in origin:
        return None
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def policy_for_serve(
    host: str, env: Mapping[str, str], allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()
) -> SecurityPolicy:
    """The policy `voicebridge serve` runs with; raises SecurityConfigError when it must not start."""
    token = env.get(ADMIN_TOKEN_ENV, "").strip() or None
    if token is None and not is_loopback_host(host):
        raise SecurityConfigError(
            f"listening on {host} (beyond loopback) needs a management token: set {ADMIN_TOKEN_ENV} to a "
            f"random secret of at least {MIN_TOKEN_CHARS} characters; clients then send "
            "`Authorization: Bearer <token>` to /api/"
        )
    origins = []
    for o in allowed_origins:
        norm = normalize_origin(o)
        if norm is None:
            raise SecurityConfigError(
                f"--allow-origin {o!r} is not an origin: give scheme://host[:port] (no path, no wildcard)"
            )
        origins.append(norm)
    try:
        hosts = host_policy(host, allowed_hosts)
    except HostConfigError as e:
        raise SecurityConfigError(str(e)) from None
    return SecurityPolicy(admin_token=token, allowed_origins=frozenset(origins), hosts=hosts)


SECURITY: web.AppKey[SecurityPolicy] = web.AppKey("security", SecurityPolicy)
CALL_BUCKETS: web.AppKey[TokenBuckets] = web.AppKey("call_buckets", TokenBuckets)
JOIN_BUCKETS: web.AppKey[TokenBuckets] = web.AppKey("join_buckets", TokenBuckets)


def _refuse(request: web.Request, status: int, message: str, kind: str, **headers: str) -> web.Response:
    return json_response(request, error_body(message, kind), status, headers=headers)


def _own_origin(request: web.Request) -> str | None:
    return normalize_origin(f"{request.scheme}://{request.host}")


def origin_allowed(request: web.Request, origin: str) -> bool:
    norm = normalize_origin(origin)
    if norm is None:
        return False
    return norm == _own_origin(request) or norm in request.app[SECURITY].allowed_origins


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _is_admin(token: str | None, admin: str) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), admin.encode())


def _client_key(request: web.Request) -> str:
    # The socket's peer, never X-Forwarded-For: a client could claim any address in a header.
    return request.remote or "unknown"


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[SECURITY]
    undecodable = undecodable_header(request.headers)
    if undecodable is not None:
        return _refuse(request, 400, undecodable, "invalid_header")
    host = request.headers.get("Host")
    if not policy.hosts.allows(host):
        message = policy.hosts.refusal(host or "", "voicebridge serve --allowed-host")
        return _refuse(request, 421, message, "misdirected_request")
    path = request.path
    if not path.startswith("/api/") and path not in _GUARDED_OUTSIDE_API:
        return await handler(request)

    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(request, origin):
        return _refuse(
            request,
            403,
            f"cross-origin request from {origin[:80]!r} refused (not this server's origin and "
            "not allowed with --allow-origin)",
            "forbidden_origin",
        )
    if request.method == "OPTIONS" and origin is not None:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )

    if policy.admin_token is not None:
        token = _bearer(request)
        if _EVENTS_ROUTE.match(path) and token is None:
            token = request.query.get("access_token")
        if _is_admin(token, policy.admin_token):
            if "Authorization" in request.headers:
                # The handler must not mistake the management token for a join token (join.py).
                headers = CIMultiDict(request.headers)
                del headers["Authorization"]
                request = request.clone(headers=headers)
        elif not (_JOIN_TOKEN_ROUTE.match(path) and request.method == "POST" and token is not None):
            why = "missing" if token is None else "wrong"
            return _refuse(
                request,
                401,
                f"the management API needs `Authorization: Bearer <{ADMIN_TOKEN_ENV}>` (token {why})",
                "unauthorized",
                **{"WWW-Authenticate": 'Bearer realm="voicebridge"'},
            )

    if request.method == "POST":
        buckets = None
        if _CALL_CREATE.match(path):
            buckets, what = request.app[CALL_BUCKETS], "calls started"
        elif _JOIN_ROUTE.match(path):
            buckets, what = request.app[JOIN_BUCKETS], "joins"
        if buckets is not None:
            wait = buckets.take(_client_key(request))
            if wait > 0:
                lim = buckets.limit
                return _refuse(
                    request,
                    429,
                    f"too many {what} from {_client_key(request)} (limit: {lim.burst} at once, "
                    f"then {lim.per_s:g} per second); retry in {math.ceil(wait)} s",
                    "rate_limited",
                    **{"Retry-After": str(math.ceil(wait))},
                )
    return await handler(request)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An allowed cross-origin caller may read the answer (errors included); nobody else is told anything."""
    origin = request.headers.get("Origin")
    if not request.path.startswith("/api/") or origin is None:
        return
    response.headers.add("Vary", "Origin")
    norm = normalize_origin(origin)
    if norm is not None and norm in request.app[SECURITY].allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = norm
        response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After"


def install_security(app: web.Application, policy: SecurityPolicy) -> None:
    """Add the guards to an app not yet started (the middleware runs inside the JSON error middleware)."""
    app[SECURITY] = policy
    app[CALL_BUCKETS] = TokenBuckets(policy.call_rate)
    app[JOIN_BUCKETS] = TokenBuckets(policy.join_rate)
    app.middlewares.append(security_middleware)
    app.on_response_prepare.append(_cors_headers)
