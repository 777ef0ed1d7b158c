"""The emulator's HTTP face: the Realtime GA endpoints under /v1, with the API's errors, status codes
and CORS.

Host names: like `serve` (edge/hosts.py), the emulator answers only to the names it was started for (the loopback
names on loopback, plus `--allowed-host`); any other `Host` gets 421 before anything else, a CORS preflight
included. Its CORS allows any origin (as the real API), so without this a page on a name rebound to 127.0.0.1
could mint `ek_` keys and open sessions.

Keys: any `Bearer sk-...` is accepted as an API key (nothing is checked against OpenAI: there is no
network); `Bearer ek_...` must be a client secret this emulator issued, unexpired and not yet used for a
call (like the real ones, each works for one call). `Emulator` embeds the whole thing in-process; `main`
is `voicebridge emulator`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from voicebridge import eventloop
from voicebridge.edge.headers import undecodable_header
from voicebridge.edge.hosts import HostConfigError, HostPolicy, host_policy
from voicebridge.edge.signals import stop_on_signals
from voicebridge.media.loopback import is_local_url, set_loopback_only
from voicebridge.observability.capacity import Capacity, LagSource
from voicebridge.observability.logs import CHATTY_LIBRARIES
from voicebridge.parent_death import die_with_parent
from voicebridge.scenarios.model import Scenario, ScenarioError, builtin_names

from . import events as ev
from . import ws
from .group import (
    WORKER_READY,
    WORKER_SCOPE,
    Forwarder,
    Group,
    group_status,
    owned_elsewhere,
)
from .handlers import MAX_EVENT_BYTES
from .keys import MEMORY, SECRET_TTL_DEFAULT_S, Keys, check_ttl, owner_of
from .limits import AcceptErrorFilter, Limits, SessionCounter, overloaded
from .persona import PersonaBook
from .roster import SERVING, Roster
from .schema import NO_SUCH_CALL, ApiError, check_client_secret_request, check_session, parse_body_json
from .session import Session
from .session_config import default_session, merge_session
from .timing import check_delay
from .timing import response_delay_ms as default_response_delay
from .voice import Voice

log = logging.getLogger(__name__)
DEFAULT_MODEL = "gpt-realtime"
MAX_BODY_BYTES = 1024 * 1024  # an SDP offer is ~5 kB and a session with tools tens of kB: 1 MiB is generous
BETA_MESSAGE = (
    "The Realtime beta API shape has been retired. Use the GA interface: POST /v1/realtime/calls with an "
    "SDP offer (and a `session` object), and no `OpenAI-Beta: realtime=v1` header."
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NEW_SESSION_PATHS = ("/v1/realtime/calls", "/v1/realtime/client_secrets")


def _json_error(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


def _cors_headers(request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    return {
        "Access-Control-Allow-Origin": origin or "*",
        "Access-Control-Expose-Headers": "Location, Content-Type",
        "Vary": "Origin",
    }


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for browsers (a preflight is answered with exactly the headers it asked for), and every error in
    the
    API's JSON shape, whichever layer raised it."""
    if request.method == "OPTIONS":
        headers = _cors_headers(request)
        headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        asked = request.headers.get("Access-Control-Request-Headers")
        headers["Access-Control-Allow-Headers"] = asked or "Authorization, Content-Type"
        headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204, headers=headers)
    try:
        if request.headers.get("OpenAI-Beta", "").lower().startswith("realtime"):
            raise ApiError(400, BETA_MESSAGE, code="beta_api_shape_disabled", param="OpenAI-Beta")
        response = await handler(request)
    except ApiError as e:
        response = _json_error(e)
    except web.HTTPRequestEntityTooLarge:
        response = _json_error(
            ApiError(413, f"Request body is over the {MAX_BODY_BYTES}-byte limit.", code="request_too_large")
        )
    except web.HTTPMethodNotAllowed:
        response = _json_error(ApiError(405, f"Method not allowed ({request.method} {request.path})."))
    except web.HTTPNotFound:
        response = _json_error(ApiError(404, f"Invalid URL ({request.method} {request.path})"))
    except web.HTTPException as e:
        response = _json_error(ApiError(e.status, e.reason))
    except ConnectionResetError:  # the client went away mid-request: nobody to answer, nothing to report
        log.info("%s %s: the client disconnected before its request was read", request.method, request.path)
        response = _json_error(ApiError(400, "The client disconnected before its request was read."))
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            log.exception("%s %s failed", request.method, request.path)
            raise
        log.warning("%s %s: out of file descriptors: %s", request.method, request.path, e)
        response = _json_error(overloaded("out of file descriptors"))
    except Exception:  # a bug in the emulator still answers in the API's shape, and is logged in full
        log.exception("%s %s failed", request.method, request.path)
        response = _json_error(
            ApiError(500, "The server had an error while processing your request.", type_="server_error")
        )
    response.headers.update(_cors_headers(request))
    return response


class Emulator:
    """The Realtime GA emulator, embeddable: `base_url = await Emulator().start()`, then `await stop()`."""

    def __init__(
        self,
        scenarios: Sequence[str | Path] = (),
        load_builtin: bool = True,
        voice: Voice | None = None,
        allowed_hosts: Sequence[str] = (),
        limits: Limits | None = None,
        lag_meter: LagSource | None = None,
        response_delay_ms: float | None = None,
        group: Group | None = None,
    ) -> None:
        """`limits`: Limits.from_env() when None (the capacity's environment variables apply to an embedded
        emulator too); `lag_meter`: what measures the loop's lag (tests inject one); `response_delay_ms`: the
        think time (timing.py; VOICEBRIDGE_EMULATOR_RESPONSE_DELAY_MS or its default when None); `group`: this
        process is one worker of `voicebridge emulator --workers N` (group.py)."""
        if response_delay_ms is not None:
            check_delay(response_delay_ms, "response_delay_ms")
        self.response_delay_ms = response_delay_ms if response_delay_ms is not None else default_response_delay()
        self.limits = limits or Limits.from_env()
        self.capacity = Capacity("sessions", self.limits.capacity, lag_meter, lag_floor=self.limits.lag_floor)
        self.counter = SessionCounter(self.limits, self.capacity)  # live sessions per key and in all (limits.py)
        self._accept_filter: AcceptErrorFilter | None = None
        self.personas = PersonaBook()
        self.voice = voice or Voice()  # pass one Voice to share its cache of spoken lines between emulators
        self.sessions: dict[str, Session] = {}
        self.group = group
        self._forward = Forwarder(group) if group is not None else None
        # API keys, and the ephemeral keys minted at /v1/realtime/client_secrets (keys.py): in memory, or in the
        # group's file that every worker of `--workers N` shares, with the parent's view of each worker (roster.py).
        self.keys = Keys(group.state if group is not None else MEMORY)
        self.roster = Roster(group.state) if group is not None else None
        self.base_url = ""
        self._extra_hosts = tuple(allowed_hosts)
        self.hosts: HostPolicy = host_policy("127.0.0.1", self._extra_hosts)  # start() sets the real bind
        self._runner: web.AppRunner | None = None
        if load_builtin:
            for name in builtin_names():
                self.load_scenario(name)
        for s in scenarios:
            self.load_scenario(s)
        self.app = self._build_app()

    def load_scenario(self, name_or_path: str | Path) -> Scenario:
        """Load a scenario (built-in name or file path); its personas answer sessions with their
        instructions."""
        return self.personas.load(str(name_or_path))

    def _build_app(self) -> web.Application:
        @web.middleware
        async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._edge(request, handler)

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[edge, _api_middleware])
        app.router.add_post("/v1/realtime/calls", self._create_call)
        app.router.add_post("/v1/realtime/calls/{call_id}/hangup", self._hangup)
        app.router.add_post("/v1/realtime/client_secrets", self._client_secret)
        # GA WebSocket (?model=) and sideband (?call_id=) when upgraded; the retired beta shape otherwise.
        app.router.add_route("*", "/v1/realtime", self._realtime)
        for path in ("/v1/realtime/sessions", "/v1/realtime/transcription_sessions"):
            app.router.add_route("*", path, self._beta)
        app.router.add_get("/readyz", self._readyz)  # not the API's: whether this emulator takes new sessions
        app.router.add_get("/healthz", self._healthz)  # not the API's: it answers (and what it holds)
        return app

    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Before anything else (CORS included): headers that are text, and only the Host names we serve."""
        undecodable = undecodable_header(request.headers)
        if undecodable is not None:
            return _json_error(ApiError(400, undecodable[0].upper() + undecodable[1:] + ".", code="invalid_header"))
        host = request.headers.get("Host")
        if not self.hosts.allows(host):
            message = self.hosts.refusal(host or "", "voicebridge emulator --allowed-host")
            return _json_error(ApiError(421, message[0].upper() + message[1:] + ".", code="misdirected_request"))
        response = await handler(request)
        if self.group is not None and request.method == "POST" and request.path in _NEW_SESSION_PATHS:
            # A client keeps its connection alive, and the kernel spreads connections, not requests: closing the
            # one that made a session lets the next session land on any worker.
            response.force_close()
        return response

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0: any free port); returns the base URL, e.g. http://127.0.0.1:8765/v1."""
        self.hosts = host_policy(host, self._extra_hosts)
        if is_local_url(f"http://{host}"):
            set_loopback_only(True)  # local clients only: offer 127.0.0.1 candidates, never other interfaces
        if self._accept_filter is None:
            self._accept_filter = AcceptErrorFilter(asyncio.get_running_loop())
            self._accept_filter.install()
        self.capacity.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        if self.group is not None:  # the listening sockets the group's parent made (workers.py)
            public = socket.socket(fileno=self.group.public_fd)
            await web.SockSite(self._runner, public).start()
            await web.SockSite(self._runner, socket.socket(fileno=self.group.private_fd)).start()
            bound = public.getsockname()[1]
        else:
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            server: Any = site._server
            bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
        self.base_url = f"http://{host}:{bound}/v1"
        return self.base_url

    async def stop(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("emulator stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._accept_filter is not None:
            self._accept_filter.remove()
            self._accept_filter = None
        if self._forward is not None:
            await self._forward.close()
        self.capacity.stop()

    # ---- endpoints --------------------------------------------------------------------------------------

    async def _readyz(self, request: web.Request) -> web.Response:
        """200 while a new session would be taken, else 503 naming why (full: capacity or the session limit). In a
        group: for the group (ready while any worker would take one, each worker's state), unless
        `?scope=worker` asks for this worker alone."""
        body = self._own_readiness()
        if self._forward is not None and self.roster is not None and request.query.get("scope") != WORKER_SCOPE:
            body = await self._forward.readiness(body, self.roster.all())
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def _healthz(self, request: web.Request) -> web.Response:
        """Alive: 200 with the sessions this process holds and, in a group, each worker's state as the parent
        noted it (no worker is asked: /readyz does that)."""
        body: dict[str, Any] = {"ok": True, "sessions": len(self.counter), **group_status(self.group)}
        if self.roster is not None:
            body["workers"] = [w.as_json() for w in self.roster.all()]
        return web.json_response(body)

    def _own_readiness(self) -> dict[str, Any]:
        live = len(self.counter)
        failing: dict[str, str] = {}
        full = self.capacity.full(live)
        if full is not None:
            failing["capacity"] = f"this emulator is at capacity: {full.message}"
        elif live >= self.limits.max_sessions:
            failing["capacity"] = f"{live} sessions live, the limit is {self.limits.max_sessions} (--max-sessions)"
        return {
            "ready": not failing, "failing": failing, "sessions": live, "capacity": self.capacity.status(live),
            **group_status(self.group),
        }

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        if ws.is_websocket_request(request):
            if self._forward is not None:
                self.keys.bearer(request)
                call_id = request.query.get("call_id")
                if call_id is not None:  # a sideband: to the worker that holds the call
                    self.keys.api_key(request)  # a sideband needs an API key: said here, as the owner would
                    if (owner := self._owner(call_id)) is not None:
                        return await self._forward.websocket(request, owner, MAX_EVENT_BYTES)
                elif (to := self._pass_on_to(request)) is not None:  # a new session: full here, to the next worker
                    return await self._forward.websocket(request, to[0], MAX_EVENT_BYTES, to[1])
            return await ws.realtime_socket(self, request)
        return await self._beta(request)

    async def _beta(self, request: web.Request) -> web.Response:
        raise ApiError(400, BETA_MESSAGE, code="beta_api_shape_disabled")

    async def _read_offer(self, request: web.Request) -> tuple[str, dict[str, Any] | None]:
        ctype = request.content_type
        if ctype == "multipart/form-data":
            form = await request.post()
            for name in form:
                if name not in ("sdp", "session"):
                    raise ApiError(400, f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)
            sdp = _form_text(form.get("sdp"))
            if sdp is None:
                raise ApiError(
                    400, "Missing required parameter: 'sdp'.", code="missing_required_parameter", param="sdp"
                )
            raw_session = _form_text(form.get("session"))
            session = None
            if raw_session is not None:
                session = parse_body_json(raw_session, "session")
            return sdp, session
        if ctype == "application/sdp":
            try:
                return (await request.read()).decode("utf-8"), None
            except UnicodeDecodeError as e:
                raise ApiError(
                    400, f"Invalid SDP offer: not UTF-8 text ({e.reason} at byte {e.start}).",
                    code="invalid_offer", param="sdp",
                ) from None
        raise ApiError(
            400,
            f"Unsupported content type {ctype!r}: send multipart/form-data (sdp, session) or "
            "application/sdp.",
            code="unsupported_content_type",
        )

    async def _create_call(self, request: web.Request) -> web.Response:
        key = self.keys.bearer(request)
        if self._forward is not None and (to := self._pass_on_to(request)) is not None:
            return await self._forward.http(request, *to)  # full here: the next worker
        secret = self.keys.redeem(key) if key.startswith("ek_") else None  # authenticate before reading the body
        sdp, session = await self._read_offer(request)
        _check_offer(sdp)
        config = default_session(request.query.get("model") or DEFAULT_MODEL)
        if secret is not None:
            config = secret.session
        if session is not None:
            check_session(session)
            config = merge_session(config, session)
        call_id = ev.new_id("rtc", 24)
        if self.group is not None:
            call_id = self.group.tag(call_id)  # its hang-up and sideband find this worker (group.py)
        # Limits checked and the session counted before any await (limits.py): concurrent offers cannot all pass.
        owner = secret.owner if secret is not None else owner_of(key)
        self.counter.add(call_id, owner, str(config.get("model") or DEFAULT_MODEL), needs_sockets=True)
        try:
            if secret is not None:
                # Spent only on a well-formed offer it could have (a typo must not burn the key), and once across
                # a group: a worker that lost the race to another answers 401 as for a reused key.
                self.keys.spend(secret)
            sess = Session(
                call_id, config, self.personas, self.voice, self.session_closed,
                response_delay_ms=self.response_delay_ms,
            )
        except BaseException:
            self.counter.release(call_id)
            raise
        self.sessions[call_id] = sess
        try:
            answer = await sess.accept(sdp)
            if "\na=candidate:" not in answer.replace("\r\n", "\n"):
                # aioice could not open a single socket (out of descriptors): nobody could reach this answer.
                raise overloaded("no ICE candidate could be gathered for the answer")
        except BaseException:
            await sess.close("offer rejected")
            raise
        sess.close_unless_connected(self.limits.connect_timeout_s)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    def _full(self) -> bool:
        """Whether a new session would be refused now for capacity or the session limit (nothing counted)."""
        live = len(self.counter)
        return self.capacity.full(live) is not None or live >= self.limits.max_sessions

    def _owner(self, call_id: str) -> int | None:
        """The other worker that holds this call, to pass a request about it on to; None: this one (or nobody's).
        An owner that is not serving (restarting, given up) lost its calls with its process: a 404 at once,
        rather than a request that waits for its restart or finds its socket closed."""
        owner = owned_elsewhere(self.group, call_id)
        if owner is not None and self.roster is not None:
            if not any(w.index == owner and w.state == SERVING for w in self.roster.all()):
                raise ApiError(404, NO_SUCH_CALL, code="call_id_not_found", param="call_id")
        return owner

    def _pass_on_to(self, request: web.Request) -> tuple[int, int] | None:
        """In a group, full here: the worker to pass this new session on to and the count for it (group.py), else
        None. The kernel spreads connections evenly, not by load, so the next worker may have room; every serving
        worker is asked once before the client hears a 429."""
        if self.group is None or self.roster is None or not self._full():
            return None
        return self.group.pass_on_to(request, {w.index for w in self.roster.all() if w.state == SERVING})

    def session_closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self.counter.release(session.id)

    async def _hangup(self, request: web.Request) -> web.Response:
        self.keys.api_key(request)
        call_id = request.match_info["call_id"]
        if self._forward is not None and (owner := self._owner(call_id)) is not None:
            return await self._forward.http(request, owner)
        session = self.sessions.get(call_id)
        if session is None:
            raise ApiError(404, NO_SUCH_CALL, code="call_id_not_found", param="call_id")
        await session.close("hangup endpoint")
        return web.Response(status=200)

    async def _client_secret(self, request: web.Request) -> web.Response:
        key = self.keys.api_key(request)
        raw = await request.read()
        body = parse_body_json(raw) if raw.strip() else {}
        check_client_secret_request(body)
        seconds = int((body.get("expires_after") or {}).get("seconds", SECRET_TTL_DEFAULT_S))
        check_ttl(seconds)
        config = default_session(DEFAULT_MODEL)
        if body.get("session") is not None:
            check_session(body["session"])
            config = merge_session(config, body["session"])
        secret = self.keys.mint(seconds, config, api_key=key)
        return web.json_response({"value": secret.value, "expires_at": secret.expires_at, "session": config})


def _form_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):  # aiohttp keeps non-text parts (application/sdp, json) as bytes
        return bytes(value).decode("utf-8", "replace")
    data = value.file.read()  # a part sent with a filename arrives as a FileField
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def _check_offer(sdp: str) -> None:
    text = sdp.strip()
    if not text.startswith("v=0"):
        raise ApiError(400, "Invalid SDP offer: it must start with 'v=0'.", code="invalid_offer", param="sdp")
    if "\nm=audio " not in text.replace("\r\n", "\n"):
        raise ApiError(
            400,
            "Offer did not have an audio media section.",  # the API's own words
            code="invalid_offer",
            param="sdp",
        )
    _check_media_lines(text)
    _check_fingerprint(text)
    _check_candidates(text)
    # The API speaks Opus only: an offer without it would get an answer with the audio rejected (port 0)
    # and a call that never hears or speaks, so it is refused here with the codecs that were offered.
    audio = text.replace("\r\n", "\n").split("\nm=audio ", 1)[1].split("\nm=", 1)[0]
    codecs = [
        line.split(" ", 1)[1].strip() for line in audio.split("\n") if line.startswith("a=rtpmap:") and " " in line
    ]
    if not any(c.lower().startswith("opus/48000") for c in codecs):
        offered = ", ".join(codecs[:8]) or "none"
        raise ApiError(
            400,
            f"Invalid SDP offer: the audio section offers no Opus (opus/48000/2); offered: {offered[:200]}.",
            code="invalid_offer",
            param="sdp",
        )


def _invalid_offer(why: str) -> ApiError:
    return ApiError(400, f"Invalid SDP offer: {why}", code="invalid_offer", param="sdp")


def _check_candidates(text: str) -> None:
    """An offer may carry no candidates at all (a browser that does not wait for gathering: the answerer learns
    its address from the first connectivity check), but one that says `a=end-of-candidates` for the section
    carrying the transport and lists none has no ICE path: aioice gives up at once and the answer would carry
    no candidates either. That is the offer's fault, so it is a 400 naming the section, not a 503."""
    lines = text.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = []
    bundle: list[str] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        elif line.startswith("a=group:BUNDLE "):
            bundle = bundle or line.split()[1:]
    for section in sections:
        mid = next((x[len("a=mid:") :] for x in section if x.startswith("a=mid:")), "")
        if bundle and mid != bundle[0]:
            continue  # bundled sections share the first one's transport and its candidates
        ended = "a=end-of-candidates" in section
        if ended and not any(x.startswith("a=candidate:") for x in section):
            name = f"mid {mid}" if mid else section[0][:40]
            raise _invalid_offer(
                f"the section {name} says a=end-of-candidates but lists no a=candidate: no ICE path can be tried."
            )


def _check_media_lines(text: str) -> None:
    """Every `m=` line is `m=<media> <port>[/<count>] <proto> <fmt> ...` with a port aiortc can take; its parser
    otherwise fails with an empty message."""
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        if not line.startswith("m="):
            continue
        shown = line[:80] + ("..." if len(line) > 80 else "")
        fields = line[2:].split(" ")
        if len(fields) < 4 or not all(fields[:4]):
            raise _invalid_offer(f"line {number} {shown!r} is not 'm=<media> <port> <proto> <formats>'.")
        port, _, count = fields[1].partition("/")
        if not (port.isascii() and port.isdigit() and int(port) <= 65535) or (count and not count.isdigit()):
            raise _invalid_offer(
                f"line {number} {shown!r} has the port {fields[1][:20]!r}; expected a number from 0 to 65535."
            )


def _check_fingerprint(text: str) -> None:
    """DTLS needs the offerer's certificate fingerprint, for the session or for each media section: the real API
    cannot set up a call without it, so neither does the emulator."""
    head, *sections = text.replace("\r\n", "\n").split("\nm=")
    if "\na=fingerprint:" in f"\n{head}":
        return
    for section in sections:
        if "\na=fingerprint:" not in section:
            media = section.split(" ", 1)[0][:20]
            raise _invalid_offer(
                f"the {media} section has no a=fingerprint attribute (and the session has none): DTLS needs the "
                "certificate fingerprint of the offerer, e.g. 'a=fingerprint:sha-256 AB:CD:...'."
            )


async def _serve(args: argparse.Namespace) -> int:
    eventloop.quiet_lost_peer_tasks()  # aiortc's data-channel sends to a peer that is gone: no traceback each
    try:
        limits = Limits.from_env(
            connect_timeout_s=getattr(args, "connect_timeout", None),
            max_sessions=getattr(args, "max_sessions", None),
            max_sessions_per_key=getattr(args, "max_sessions_per_key", None),
            sessions_per_core=getattr(args, "sessions_per_core", None),
            max_lag_ms=getattr(args, "max_lag_ms", None),
        )
        allowed = getattr(args, "allowed_host", None) or ()
        group = Group.from_env()  # one worker of `voicebridge emulator --workers N` (workers.py)
        if group is not None:
            die_with_parent(group.parent)
        emulator = Emulator(
            scenarios=args.scenario, allowed_hosts=allowed, limits=limits,
            response_delay_ms=getattr(args, "response_delay_ms", None), group=group,
        )
    except (ScenarioError, HostConfigError, ValueError) as e:
        print(f"voicebridge emulator: {e}", flush=True)
        return 2
    try:
        url = await emulator.start(args.host, args.port)
    except OSError as e:
        print(f"voicebridge emulator: cannot listen on {args.host}:{args.port}: {e.strerror}", flush=True)
        return 1
    if group is not None:  # the parent says where the group serves, once every worker is up
        print(f"{WORKER_READY}{group.index} pid {os.getpid()} budget {emulator.capacity.limits.budget}", flush=True)
        await stop_on_signals().wait()
        await emulator.stop()
        return 0
    print(f"voicebridge emulator: serving the Realtime GA API at {url}", flush=True)
    print(
        f"voicebridge emulator: think time {emulator.response_delay_ms:g} ms; capacity "
        f"{emulator.capacity.limits.budget or 'unbounded'} sessions, loop lag limit {limits.max_lag_ms:g} ms",
        flush=True,
    )
    stop = stop_on_signals()
    await stop.wait()
    await emulator.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    """`voicebridge emulator [--host] [--port] [--scenario FILE]... [--allowed-host NAME]...`"""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LIBRARIES:  # ICE checks and HTTP requests only from WARNING up: a line per check is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    return asyncio.run(_serve(args))
