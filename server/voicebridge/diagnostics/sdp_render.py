"""Render `sdp_explain.explain()` for people, and `voicebridge sdp explain FILE [--other FILE2]
[--expect-loopback] [--json]`.

The parsing and the checks live in sdp_explain.py; this is only how they are shown (the web console has its
own rendering of the same JSON in web/debug.js).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .sdp_explain import MAX_SDP_BYTES, SdpError, explain


def _media_lines(media: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for m in media:
        out.append(
            f"  [{m['index']}] {m['kind']} mid={m['mid']} port={m['port']} {m['protocol']} "
            f"{m['direction']} setup={m['setup']} rtcp-mux={'yes' if m['rtcp_mux'] else 'no'}"
        )
        for c in m["codecs"]:
            fmtp = ";".join(f"{k}={v}" if v else k for k, v in c["fmtp"].items())
            chans = f"/{c['channels']}" if c["channels"] > 1 else ""
            out.append(
                f"      codec {c['payload_type']}: {c['name']}/{c['clock_rate']}{chans}"
                + (f"  fmtp {fmtp}" if fmtp else "")
                + (f"  rtcp-fb {', '.join(c['rtcp_fb'])}" if c.get("rtcp_fb") else "")
            )
        if m["kind"] == "application":
            out.append(
                f"      data channel: sctp-port={m['sctp_port']} max-message-size={m['max_message_size']}"
            )
        for f in m["fingerprints"][:1]:
            out.append(f"      fingerprint {f['algorithm']} {f['hash'][:23]}...")
        out.append(
            f"      ice-ufrag={m['ice_ufrag']} ice-pwd={'present' if m['ice_pwd_present'] else 'MISSING'}"
        )
        for c in m["candidates"]:
            out.append(f"      candidate {c['type']} {c['transport']} {c['address']}:{c['port']}")
        if not m["candidates"]:
            out.append("      (no candidates)")
    return out


def _head(role: str, session: dict[str, Any], media: list[dict[str, Any]]) -> str:
    return (
        f"SDP {role}: {len(media)} media section(s)"
        + (f", BUNDLE {' '.join(session['bundle'])}" if session["bundle"] else ", no BUNDLE")
        + (", ice-lite" if session["ice_lite"] else "")
    )


def _warning_lines(warnings: list[dict[str, Any]]) -> list[str]:
    out = [f"warnings: {len(warnings)}" if warnings else "warnings: none"]
    for w in warnings:
        out.append(f"  ! {w['code']}" + (f" (mid {w['mid']})" if "mid" in w else "") + f": {w['message']}")
    return out


def render(ex: dict[str, Any]) -> str:
    """A human-readable rendering of `explain()`'s result (and of its counterpart, when it has one)."""
    out = [_head(ex["role"], ex["session"], ex["media"]), *_media_lines(ex["media"])]
    if "counterpart" in ex:
        cp = ex["counterpart"]
        out.append("")
        out.append("counterpart " + _head(cp["role"], cp["session"], cp["media"]))
        out.extend(_media_lines(cp["media"]))
        if cp["warnings"]:
            out.append("counterpart " + _warning_lines(cp["warnings"])[0])
            out.extend(_warning_lines(cp["warnings"])[1:])
        out.append("")
    out.extend(_warning_lines(ex["warnings"]))
    return "\n".join(out)


def _read(path_text: str) -> str:
    try:
        if path_text == "-":
            data = sys.stdin.buffer.read(MAX_SDP_BYTES + 1)
        else:
            with open(path_text, "rb") as f:
                data = f.read(MAX_SDP_BYTES + 1)
    except OSError as e:
        raise SdpError(f"{path_text}: cannot read: {e.strerror}") from None
    if len(data) > MAX_SDP_BYTES:
        raise SdpError(f"{path_text}: over the {MAX_SDP_BYTES}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SdpError(f"{path_text}: not UTF-8 text (byte {e.start})") from None
    # Accept an RTCSessionDescription as JSON ({"type": ..., "sdp": ...}), as browsers and logs show it.
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SdpError(f"{path_text}: looks like JSON but is not valid: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("sdp"), str):
            raise SdpError(f'{path_text}: JSON input needs an "sdp" text field')
        text = obj["sdp"]
    return text


def main(args: argparse.Namespace) -> int:
    """`voicebridge sdp explain FILE [--other FILE2] [--expect-loopback] [--json]`; 2 on unreadable input."""
    try:
        sdp = _read(str(args.file))
        other_path = getattr(args, "other", None)
        other = _read(str(other_path)) if other_path else None
        ex = explain(sdp, other, expect_loopback=bool(getattr(args, "expect_loopback", False)))
    except SdpError as e:
        print(f"voicebridge sdp explain: {e}", file=sys.stderr)
        return 2
    print(json.dumps(ex, indent=2) if args.json else render(ex))
    return 0
