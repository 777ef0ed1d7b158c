"""SDP explain: real fixtures (aiortc pair, Chromium and Realtime API shapes), classic mistakes, bad input."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebridge.diagnostics.sdp_explain import MAX_SDP_BYTES, SdpError, explain, parse
from voicebridge.diagnostics.sdp_render import main, render

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).parent.parent / "fixtures" / "sdp"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8")  # keep the CRLF line ends


def codes(ex: dict[str, Any]) -> set[str]:
    return {w["code"] for w in ex["warnings"]}


def test_aiortc_offer_is_explained() -> None:
    ex = explain(fixture("aiortc_offer.sdp"))
    assert ex["role"] == "offer"
    assert ex["session"]["bundle"] == ["0", "1"]
    audio, app = ex["media"]
    assert (audio["kind"], audio["mid"], audio["direction"], audio["setup"]) == (
        "audio",
        "0",
        "sendrecv",
        "actpass",
    )
    assert audio["codecs"][0] | {"fmtp": {}} == {
        "payload_type": 96,
        "name": "opus",
        "clock_rate": 48000,
        "channels": 2,
        "fmtp": {},
        "rtcp_fb": [],
    }
    assert [c["name"] for c in audio["codecs"]] == ["opus", "G722", "PCMU", "PCMA"]
    assert audio["rtcp_mux"] is True
    assert [f["algorithm"] for f in audio["fingerprints"]] == ["sha-256", "sha-384", "sha-512"]
    assert audio["candidates"][0]["type"] == "host" and audio["candidates"][0]["address"] == "127.0.0.1"
    assert audio["end_of_candidates"] is True
    assert (app["kind"], app["protocol"], app["sctp_port"], app["max_message_size"]) == (
        "application",
        "UDP/DTLS/SCTP",
        5000,
        262144,
    )
    assert ex["warnings"] == []


def test_ice_password_is_never_shown() -> None:
    text = fixture("aiortc_offer.sdp")
    pwd = re.search(r"a=ice-pwd:(\S+)", text)
    assert pwd is not None
    ex = explain(text)
    assert ex["media"][0]["ice_pwd_present"] is True
    assert pwd.group(1) not in json.dumps(ex) and pwd.group(1) not in render(ex)


def test_aiortc_pair_has_no_conflicts_and_loopback_only() -> None:
    ex = explain(fixture("aiortc_offer.sdp"), fixture("aiortc_answer.sdp"), expect_loopback=True)
    assert ex["warnings"] == [] and ex["counterpart"]["warnings"] == []
    assert ex["counterpart"]["role"] == "answer"
    assert ex["counterpart"]["media"][0]["setup"] == "active"


def test_answer_given_first_still_finds_offer() -> None:
    ex = explain(fixture("aiortc_answer.sdp"), fixture("aiortc_offer.sdp"))
    assert ex["role"] == "answer" and ex["counterpart"]["role"] == "offer"
    assert ex["warnings"] == []


def test_chromium_offer_fmtp_and_mdns_candidates() -> None:
    ex = explain(fixture("chromium_offer.sdp"))
    audio = ex["media"][0]
    opus = audio["codecs"][0]
    assert (opus["payload_type"], opus["name"]) == (111, "opus")
    assert opus["fmtp"] == {"minptime": "10", "useinbandfec": "1"}
    assert opus["rtcp_fb"] == ["transport-cc"]
    assert audio["ice_options"] == ["trickle"]
    addrs = [c["address"] for c in audio["candidates"]]
    assert addrs[1].endswith(".local")
    assert audio["candidates"][2]["tcptype"] == "active"
    assert ex["warnings"] == []
    # The mDNS and any non-127 address are flagged only when loopback is expected.
    flagged = explain(fixture("chromium_offer.sdp"), expect_loopback=True)
    assert codes(flagged) == {"non_loopback_candidate"}
    assert ".local" in flagged["warnings"][0]["message"]


def test_openai_answer_shape_session_level_fingerprint_and_ice_lite() -> None:
    ex = explain(fixture("openai_answer.sdp"), fixture("chromium_offer.sdp"))
    assert ex["role"] == "answer" and ex["session"]["ice_lite"] is True
    for m in ex["media"]:
        assert m["fingerprints"][0]["algorithm"] == "sha-256"  # inherited from the session level
        assert m["setup"] == "active"
    assert [c["port"] for c in ex["media"][0]["candidates"]] == [3478, 443]
    assert ex["warnings"] == []


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def test_no_opus_is_warned() -> None:
    text = fixture("aiortc_offer.sdp")
    text = _edit(text, "96 9 0 8", "9 0 8")
    text = _edit(text, "a=rtpmap:96 opus/48000/2\r\n", "")
    ex = explain(text)
    assert codes(ex) == {"no_opus"} and ex["warnings"][0]["mid"] == "0"


def test_no_application_section_is_warned() -> None:
    text = fixture("aiortc_offer.sdp")
    text = text[: text.index("m=application")]
    text = _edit(text, "BUNDLE 0 1", "BUNDLE 0")
    ex = explain(text)
    assert codes(ex) == {"no_application"}
    assert "oai-events" in ex["warnings"][0]["message"]


def test_direction_conflict() -> None:
    offer = _edit(fixture("aiortc_offer.sdp"), "a=sendrecv", "a=sendonly")
    answer = _edit(fixture("aiortc_answer.sdp"), "a=sendrecv", "a=sendonly")
    ex = explain(offer, answer)
    assert "direction_conflict" in codes(ex)
    ok = explain(offer, _edit(fixture("aiortc_answer.sdp"), "a=sendrecv", "a=recvonly"))
    assert "direction_conflict" not in codes(ok)


@pytest.mark.parametrize("role", ["active", "passive"])
def test_setup_role_conflict(role: str) -> None:
    offer = fixture("aiortc_offer.sdp").replace("a=setup:actpass", f"a=setup:{role}")
    answer = fixture("aiortc_answer.sdp").replace("a=setup:active", f"a=setup:{role}")
    ex = explain(offer, answer)
    conflicts = [w for w in ex["warnings"] if w["code"] == "setup_conflict"]
    assert [w["mid"] for w in conflicts] == ["0", "1"]


def test_answer_with_actpass_is_warned() -> None:
    answer = fixture("aiortc_answer.sdp").replace("a=setup:active", "a=setup:actpass")
    ex = explain(fixture("aiortc_offer.sdp"), answer)
    # Both say actpass: the pair check flags it, and the counterpart (taken as the answer) too.
    assert "setup_conflict" in codes(ex)


def test_no_candidates_is_warned() -> None:
    text = "\r\n".join(
        ln for ln in fixture("aiortc_offer.sdp").split("\r\n") if not ln.startswith("a=candidate")
    )
    assert "no_candidates" in codes(explain(text))


def test_no_common_codec_and_section_mismatch() -> None:
    offer = fixture("chromium_offer.sdp")
    answer = _edit(fixture("openai_answer.sdp"), "a=rtpmap:111 opus/48000/2", "a=rtpmap:111 ilbc/8000")
    assert "no_common_codec" in codes(explain(offer, answer))
    short = answer[: answer.index("m=application")]
    assert "section_count_mismatch" in codes(explain(offer, short))


def test_bundle_naming_missing_mid() -> None:
    text = _edit(fixture("aiortc_offer.sdp"), "BUNDLE 0 1", "BUNDLE 0 1 2")
    assert "bundle_unknown_mid" in codes(explain(text))


def test_lf_only_and_trailing_blank_lines_are_accepted() -> None:
    text = fixture("aiortc_offer.sdp").replace("\r\n", "\n") + "\n\n"
    assert explain(text)["warnings"] == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("hello", "line 1"),
        ("v=1\r\n", "v=0"),
        ("v=0\r\nm=audio\r\n", "line 2: an m= line"),
        ("v=0\r\nm=audio 99999 RTP/AVP 0\r\n", "m= port"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:x opus\r\n", "line 3: an rtpmap"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 5 1.2.3.4 x typ host\r\n", "candidate port"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp\r\n", "line 3: a candidate needs"),
        ("v=0\r\no=- 1\r\n", "line 2: o= needs"),
        ("v=0\r\nA=b\r\n", "line 2: expected `x=value`"),
        ("v=0\r\n" + "a=x\r\n" * (MAX_SDP_BYTES // 5), "byte limit"),
    ],
)
def test_bad_input_gives_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(SdpError, match=re.escape(fragment)):
        explain(text)


def test_non_text_input() -> None:
    with pytest.raises(SdpError, match="must be text"):
        parse(b"v=0")  # type: ignore[arg-type]


def test_counterpart_errors_say_so() -> None:
    with pytest.raises(SdpError, match="counterpart SDP: line 1"):
        explain(fixture("aiortc_offer.sdp"), "nope")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_any_text_raises_only_sdp_error(text: str) -> None:
    try:
        ex = explain(text)
    except SdpError as e:
        assert str(e)
    else:
        json.dumps(ex)
        render(ex)


_sdp_line = st.one_of(
    st.sampled_from(fixture("chromium_offer.sdp").split("\r\n") + fixture("openai_answer.sdp").split("\r\n")),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from("amcsotb"), st.text(max_size=40)),
    st.builds(
        lambda a, v: f"a={a}:{v}",
        st.sampled_from(
            [
                "candidate",
                "rtpmap",
                "fmtp",
                "setup",
                "fingerprint",
                "group",
                "sctp-port",
                "max-message-size",
                "mid",
                "rtcp-fb",
                "extmap",
                "ssrc",
                "ice-ufrag",
                "ice-pwd",
            ]
        ),
        st.text(max_size=40),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_sdp_line, max_size=30), st.lists(_sdp_line, max_size=30))
def test_fuzz_sdp_shaped_pairs_raise_only_sdp_error(a: list[str], b: list[str]) -> None:
    try:
        ex = explain("\r\n".join(["v=0", *a]), "\r\n".join(["v=0", *b]), expect_loopback=True)
    except SdpError as e:
        assert str(e)
    else:
        json.dumps(ex)
        render(ex)


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], file: str, stdin: str = "", **kw: Any
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    rc = main(argparse.Namespace(file=Path(file), json=kw.pop("json", False), **kw))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_human_json_and_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(monkeypatch, capsys, str(FIXTURES / "chromium_offer.sdp"))
    assert rc == 0 and "codec 111: opus/48000/2  fmtp minptime=10;useinbandfec=1" in out
    rc, out, _ = _run(
        monkeypatch,
        capsys,
        str(FIXTURES / "aiortc_offer.sdp"),
        json=True,
        other=str(FIXTURES / "aiortc_answer.sdp"),
    )
    assert rc == 0 and json.loads(out)["counterpart"]["role"] == "answer"
    desc = json.dumps({"type": "offer", "sdp": fixture("aiortc_offer.sdp")})
    rc, out, _ = _run(monkeypatch, capsys, "-", stdin=desc, json=True)
    assert rc == 0 and json.loads(out)["role"] == "offer"


@pytest.mark.parametrize(
    ("file", "stdin", "fragment"),
    [
        ("/nonexistent/x.sdp", "", "cannot read"),
        ("-", "garbage", "line 1"),
        ("-", "{not json", "not valid"),
        ("-", '{"type": "offer"}', '"sdp" text field'),
    ],
)
def test_cli_bad_input_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], file: str, stdin: str, fragment: str
) -> None:
    rc, out, err = _run(monkeypatch, capsys, file, stdin=stdin)
    assert rc == 2 and out == "" and fragment in err and "Traceback" not in err
