"""Explain an SDP offer or answer, and warn about the mistakes that break a Realtime WebRTC call.

`explain(sdp, other)` parses one SDP (Chromium's, aiortc's, the Realtime API's) into plain JSON-able data:
session and media sections, codecs with fmtp, direction, mid, BUNDLE, fingerprints, DTLS setup role, ICE
credentials and candidates, rtcp-mux and the SCTP (data channel) section. With `other`, its counterpart, it
also checks the pair (direction and setup-role conflicts, no common codec, mids that do not match). The
parser is strict about structure (every line `x=value`, `v=` first, well-formed `m=`, `rtpmap`, `candidate`
lines) and raises `SdpError` naming the line; unknown attributes are kept, never fatal, as browsers add new
ones every release.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

MAX_SDP_BYTES = 256 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SETUP_ROLES = ("actpass", "active", "passive", "holdconn")
# RFC 3551 static payload types: an m-line may list them without an rtpmap.
STATIC_PT: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1), 13: ("CN", 8000, 1),
    18: ("G729", 8000, 1),
}
# What an answer may say for each direction of the offer (RFC 3264 section 6.1).
ANSWER_DIRECTIONS = {
    "sendrecv": set(DIRECTIONS), "sendonly": {"recvonly", "inactive"},
    "recvonly": {"sendonly", "inactive"}, "inactive": {"inactive"},
}
_LINE = re.compile(r"^([a-z])=(.*)$")
_RTPMAP = re.compile(r"^(\d{1,3}) ([^/\s]+)/(\d+)(?:/(\d+))?$")


class SdpError(ValueError):
    """The text is not SDP this module can read; the message names the line and what is wrong with it."""


def _warn(code: str, message: str, mid: str | None = None) -> dict[str, Any]:
    w: dict[str, Any] = {"code": code, "message": message}
    if mid is not None:
        w["mid"] = mid
    return w


def _int(text: str, what: str, where: str, lo: int = 0, hi: int = 2**32) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise SdpError(f"{where}: {what} must be a whole number {lo}-{hi}, got {text!r}")
    return int(text)


def _candidate(value: str, where: str) -> dict[str, Any]:
    # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> [name value]...
    parts = value.split()
    if len(parts) < 8 or parts[6] != "typ" or len(parts) % 2:
        raise SdpError(
            f"{where}: a candidate needs `foundation component transport priority address port "
            f"typ TYPE [name value]...`, got {value!r}"
        )
    c: dict[str, Any] = {
        "foundation": parts[0].removeprefix("candidate:"),
        "component": _int(parts[1], "candidate component", where, 1, 256),
        "transport": parts[2].lower(),
        "priority": _int(parts[3], "candidate priority", where),
        "address": parts[4],
        "port": _int(parts[5], "candidate port", where, 0, 65535),
        "type": parts[7],
    }
    extra = dict(zip(parts[8::2], parts[9::2], strict=True))
    for key in ("raddr", "rport", "tcptype", "generation", "ufrag"):
        if key in extra:
            c[key] = extra[key]
    return c


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def _new_media(line: str, value: str, index: int) -> dict[str, Any]:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"{line}: an m= line needs `media port proto fmt...`, got {value!r}")
    port_text = parts[1].split("/")[0]
    return {
        "index": index, "kind": parts[0], "port": _int(port_text, "m= port", line, 0, 65535),
        "protocol": parts[2], "formats": parts[3:], "mid": None, "direction": None, "codecs": [],
        "rtcp_mux": False, "rtcp_rsize": False, "setup": None, "fingerprints": [], "ice_ufrag": None,
        "ice_pwd_present": False, "ice_options": [], "candidates": [], "end_of_candidates": False,
        "sctp_port": None, "max_message_size": None, "extmap": [], "ssrcs": [], "connection": None,
        "_rtpmap": {}, "_fmtp": {}, "_rtcp_fb": {},
    }


def _session_defaults() -> dict[str, Any]:
    return {
        "origin": None, "name": None, "connection": None, "bundle": [], "ice_lite": False, "setup": None,
        "fingerprints": [], "ice_ufrag": None, "ice_pwd_present": False, "ice_options": [],
        "direction": None, "msid_semantic": None, "groups": [],
    }


def _attribute(target: dict[str, Any], name: str, value: str | None, where: str, is_media: bool) -> None:
    """Apply one `a=` line to the session or to the current media section."""
    if name in DIRECTIONS and value is None:
        target["direction"] = name
    elif name == "setup" and value is not None:
        target["setup"] = value.strip()
    elif name == "fingerprint" and value is not None:
        alg, _, digest = value.strip().partition(" ")
        if not digest:
            raise SdpError(f"{where}: a fingerprint needs `algorithm hash`, got {value!r}")
        target["fingerprints"].append({"algorithm": alg.lower(), "hash": digest.strip()})
    elif name == "ice-ufrag" and value is not None:
        target["ice_ufrag"] = value.strip()
    elif name == "ice-pwd":
        # Shown as present/absent only: it authenticates ICE checks, so it has no place in a debug view.
        target["ice_pwd_present"] = bool(value)
    elif name == "ice-options" and value is not None:
        target["ice_options"] = value.split()
    elif not is_media:
        if name == "ice-lite":
            target["ice_lite"] = True
        elif name == "group" and value is not None:
            if not value.split():
                raise SdpError(f"{where}: a=group needs `SEMANTICS mid...`, got nothing")
            semantics, *mids = value.split()
            target["groups"].append({"semantics": semantics, "mids": mids})
            if semantics == "BUNDLE":
                target["bundle"] = mids
        elif name == "msid-semantic" and value is not None:
            target["msid_semantic"] = value.strip()
    elif name == "mid" and value is not None:
        target["mid"] = value.strip()
    elif name == "rtcp-mux":
        target["rtcp_mux"] = True
    elif name == "rtcp-rsize":
        target["rtcp_rsize"] = True
    elif name == "end-of-candidates":
        target["end_of_candidates"] = True
    elif name == "candidate" and value is not None:
        target["candidates"].append(_candidate(value, where))
    elif name == "rtpmap" and value is not None:
        m = _RTPMAP.match(value.strip())
        if not m:
            raise SdpError(f"{where}: an rtpmap needs `PT name/clock[/channels]`, got {value!r}")
        pt = _int(m.group(1), "payload type", where, 0, 127)
        target["_rtpmap"][pt] = (m.group(2), int(m.group(3)), int(m.group(4) or 1))
    elif name == "fmtp" and value is not None:
        pt_text, _, params = value.partition(" ")
        target["_fmtp"][pt_text] = params.strip()
    elif name == "rtcp-fb" and value is not None:
        pt_text, _, fb = value.partition(" ")
        target["_rtcp_fb"].setdefault(pt_text, []).append(fb.strip())
    elif name == "sctp-port" and value is not None:
        target["sctp_port"] = _int(value.strip(), "sctp-port", where, 0, 65535)
    elif name == "max-message-size" and value is not None:
        target["max_message_size"] = _int(value.strip(), "max-message-size", where)
    elif name == "extmap" and value is not None:
        ident, _, uri = value.partition(" ")
        target["extmap"].append({"id": ident, "uri": uri.strip()})
    elif name == "ssrc" and value is not None:
        ssrc = value.split(" ", 1)[0]
        if ssrc not in target["ssrcs"]:
            target["ssrcs"].append(ssrc)


def _parse_fmtp(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, sep, val = item.strip().partition("=")
        if key:
            out[key] = val if sep else ""
    return out


def _finish_media(m: dict[str, Any], session: dict[str, Any]) -> None:
    """Resolve codecs from the format list; inherit session-level attributes the section does not repeat."""
    rtpmap, fmtp, fb = m.pop("_rtpmap"), m.pop("_fmtp"), m.pop("_rtcp_fb")
    if "RTP" in m["protocol"].upper():
        for fmt in m["formats"]:
            pt = int(fmt) if fmt.isdigit() else -1
            name, rate, channels = rtpmap.get(pt) or STATIC_PT.get(pt) or ("unknown", 0, 0)
            m["codecs"].append(
                {
                    "payload_type": pt if pt >= 0 else fmt,
                    "name": name,
                    "clock_rate": rate,
                    "channels": channels,
                    "fmtp": _parse_fmtp(fmtp.get(fmt, "")),
                    "rtcp_fb": fb.get(fmt, []),
                }
            )
    for key in ("setup", "ice_ufrag", "direction"):
        if m[key] is None:
            m[key] = session[key]
    if not m["fingerprints"]:
        m["fingerprints"] = list(session["fingerprints"])
    m["ice_pwd_present"] = m["ice_pwd_present"] or session["ice_pwd_present"]
    if m["direction"] is None:
        m["direction"] = "sendrecv"  # RFC 4566: the default when neither level says


def parse(sdp: str) -> dict[str, Any]:
    """Parse SDP text into `{"session": {...}, "media": [...]}` or raise SdpError."""
    if not isinstance(sdp, str):
        raise SdpError(f"SDP must be text, got {type(sdp).__name__}")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise SdpError(f"SDP is over the {MAX_SDP_BYTES}-byte limit")
    lines = sdp.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SdpError("SDP is empty")
    session = _session_defaults()
    media: list[dict[str, Any]] = []
    for n, raw in enumerate(lines, start=1):
        where = f"line {n}"
        m = _LINE.match(raw.rstrip("\r"))
        if not m:
            raise SdpError(f"{where}: expected `x=value` (one lower-case letter, '='), got {raw[:60]!r}")
        kind, value = m.group(1), m.group(2)
        if n == 1 and (kind != "v" or value.strip() != "0"):
            raise SdpError(f"line 1: SDP must start with `v=0`, got {raw[:60]!r}")
        current: dict[str, Any] = media[-1] if media else session
        if kind == "m":
            media.append(_new_media(where, value, len(media)))
        elif kind == "o":
            o = value.split()
            if len(o) != 6:
                raise SdpError(f"{where}: o= needs `username sess-id version nettype addrtype address`")
            session["origin"] = {"username": o[0], "session_id": o[1], "version": o[2], "address": o[5]}
        elif kind == "s":
            session["name"] = value
        elif kind == "c":
            current["connection"] = value.strip()
        elif kind == "a":
            name, sep, attr_value = value.partition(":")
            _attribute(current, name.strip(), attr_value if sep else None, where, bool(media))
    for sec in media:
        _finish_media(sec, session)
    return {"session": session, "media": media}


def _guess_role(parsed: dict[str, Any]) -> str:
    setups = {m["setup"] for m in parsed["media"]} | {parsed["session"]["setup"]}
    if "actpass" in setups:
        return "offer"
    if setups & {"active", "passive"}:
        return "answer"
    return "unknown"


def _single_warnings(p: dict[str, Any], role: str, expect_loopback: bool) -> list[dict[str, Any]]:
    w: list[dict[str, Any]] = []
    media, session = p["media"], p["session"]
    if not media:
        return [_warn("no_media", "no m= sections: nothing to send or receive")]
    audio = [m for m in media if m["kind"] == "audio"]
    if not audio:
        w.append(_warn("no_audio", "no audio section: a Realtime call needs one m=audio line"))
    for m in audio:
        if m["port"] == 0:
            w.append(_warn("audio_rejected", "audio section has port 0: it was rejected", m["mid"]))
        if not any(c["name"].lower() == "opus" for c in m["codecs"]):
            w.append(
                _warn(
                    "no_opus",
                    "audio section offers no Opus: the Realtime API only speaks Opus over WebRTC",
                    m["mid"],
                )
            )
        if m["direction"] != "sendrecv":
            w.append(
                _warn(
                    "audio_not_sendrecv",
                    f"audio direction is {m['direction']}: an agent leg needs "
                    "sendrecv to both speak and hear",
                    m["mid"],
                )
            )
        if not m["rtcp_mux"]:
            w.append(
                _warn("no_rtcp_mux", "audio section lacks a=rtcp-mux (WebRTC endpoints require it)", m["mid"])
            )
    apps = [m for m in media if m["kind"] == "application"]
    if not apps:
        w.append(
            _warn(
                "no_application",
                "no application (SCTP) section: no data channel, so no `oai-events` "
                "channel: create it BEFORE createOffer()",
            )
        )
    for m in apps:
        if m["sctp_port"] is None:
            w.append(_warn("no_sctp_port", "application section lacks a=sctp-port", m["mid"]))
    mids = [m["mid"] for m in media]
    if None in mids:
        w.append(_warn("no_mid", "a media section has no a=mid (needed for BUNDLE)"))
    dupes = sorted({x for x in mids if x is not None and mids.count(x) > 1})
    if dupes:
        w.append(_warn("duplicate_mid", f"mid(s) used twice: {', '.join(dupes)}"))
    unknown = [b for b in session["bundle"] if b not in mids]
    if unknown:
        w.append(_warn("bundle_unknown_mid", f"BUNDLE names mid(s) with no section: {', '.join(unknown)}"))
    if len(media) > 1 and not session["bundle"]:
        w.append(
            _warn("no_bundle", "several media sections but no a=group:BUNDLE: each needs its own transport")
        )
    for m in media:
        if not m["fingerprints"]:
            w.append(_warn("no_fingerprint", "no a=fingerprint: DTLS cannot be verified", m["mid"]))
        if not m["ice_ufrag"] or not m["ice_pwd_present"]:
            w.append(_warn("no_ice_credentials", "missing a=ice-ufrag or a=ice-pwd", m["mid"]))
        if m["setup"] is not None and m["setup"] not in SETUP_ROLES:
            w.append(
                _warn("bad_setup", f"a=setup:{m['setup']} is not one of {', '.join(SETUP_ROLES)}", m["mid"])
            )
        if role == "answer" and m["setup"] == "actpass":
            w.append(
                _warn("answer_actpass", "an answer must choose active or passive, not actpass", m["mid"])
            )
    candidates = [c for m in media for c in m["candidates"]]
    if not candidates:
        w.append(
            _warn(
                "no_candidates",
                "no ICE candidates: either they are trickled separately or gathering "
                "did not finish before the SDP was sent (non-trickle peers such as the Realtime API "
                "need them in the SDP)",
            )
        )
    if expect_loopback:
        outside = sorted({c["address"] for c in candidates if not _is_loopback(c["address"])})
        if outside:
            w.append(
                _warn("non_loopback_candidate", f"candidate address(es) off loopback: {', '.join(outside)}")
            )
    return w


def _pair_warnings(offer: dict[str, Any], answer: dict[str, Any]) -> list[dict[str, Any]]:
    w: list[dict[str, Any]] = []
    om, am = offer["media"], answer["media"]
    if len(om) != len(am):
        w.append(
            _warn("section_count_mismatch", f"offer has {len(om)} media section(s), answer has {len(am)}")
        )
    for o, a in zip(om, am, strict=False):
        mid = o["mid"]
        if o["kind"] != a["kind"] or o["mid"] != a["mid"]:
            w.append(
                _warn(
                    "mid_mismatch",
                    f"section {o['index']}: offer {o['kind']} mid {o['mid']} vs answer "
                    f"{a['kind']} mid {a['mid']}",
                    mid,
                )
            )
            continue
        if a["direction"] not in ANSWER_DIRECTIONS.get(o["direction"], set(DIRECTIONS)):
            w.append(
                _warn(
                    "direction_conflict", f"offer says {o['direction']} but answer says {a['direction']}", mid
                )
            )
        roles = {o["setup"], a["setup"]}
        if o["setup"] == a["setup"] and o["setup"] in ("active", "passive", "actpass"):
            w.append(
                _warn(
                    "setup_conflict",
                    f"both sides are setup:{o['setup']}: DTLS needs one active (client) "
                    "and one passive (server)",
                    mid,
                )
            )
        elif roles == {"actpass", "holdconn"}:
            w.append(_warn("setup_conflict", "answer put the DTLS connection on hold (holdconn)", mid))
        if o["kind"] == "audio" and a["port"] != 0:
            names = {c["name"].lower() for c in o["codecs"]} & {c["name"].lower() for c in a["codecs"]}
            if not names - {"telephone-event", "cn", "red", "unknown"}:
                w.append(_warn("no_common_codec", "offer and answer share no audio codec", mid))
    if offer["session"]["ice_lite"] and answer["session"]["ice_lite"]:
        w.append(_warn("both_ice_lite", "both sides are ice-lite: nobody sends connectivity checks"))
    return w


def explain(sdp: str, other: str | None = None, *, expect_loopback: bool = False) -> dict[str, Any]:
    """Explain one SDP; with `other` (its counterpart, offer or answer) also check the pair.

    Which one is the offer is read from `a=setup:actpass` (only an offer may say it); without it, `sdp` is
    taken as the offer. Raises SdpError for input that is not SDP.
    """
    p = parse(sdp)
    role = _guess_role(p)
    result: dict[str, Any] = {"role": role, **p}
    warnings = _single_warnings(p, role, expect_loopback)
    if other is not None:
        try:
            q = parse(other)
        except SdpError as e:
            raise SdpError(f"counterpart SDP: {e}") from None
        other_role = _guess_role(q)
        sdp_is_offer = role == "offer" or (role != "answer" and other_role != "offer")
        offer, answer = (p, q) if sdp_is_offer else (q, p)
        if role == "unknown":
            result["role"] = "offer" if sdp_is_offer else "answer"
        result["counterpart"] = {
            "role": "answer" if sdp_is_offer else "offer",
            **q,
            "warnings": _single_warnings(q, other_role, expect_loopback),
        }
        warnings += _pair_warnings(offer, answer)
    result["warnings"] = warnings
    return result

