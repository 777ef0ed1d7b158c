"""The floor: what forwarding one SRTP packet costs at the least on this machine, measured in the same run.

Every forwarded packet needs a receive, an SRTP unprotect, an SRTP protect and a send; nothing a relay does
can cost less. This module does exactly that in a plain Python loop (pylibsrtp, aiortc's own SRTP binding,
with the profile aiortc negotiates between two aiortc peers, and a UDP socket on 127.0.0.1) on real packets
of the bench's size: the load's cached Opus payloads behind a 20-byte RTP header carrying the MID extension,
as the bridge sends them. The bridge's CPU per forwarded packet is then judged by its ratio to this floor,
since absolute times differ from machine to machine.

It is CPU time (process_time), like the bridge's figure, over the forwarding only: the producer's sends and
the sink's receives happen between timed batches. Loopback delivery runs in the sender's system call, so the
timed send includes the kernel's delivery, as it does in the bridge.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import time
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from pylibsrtp import Session

BATCH = 64  # packets in flight at once: well within the default socket buffers
ROUNDS = 5
PACKETS_PER_ROUND = 4096
_MID_EXTENSION = struct.pack("!HHBs2x", 0xBEDE, 1, 0x10, b"0")  # RFC 8285 one-byte header: id 1, mid "0"


class Floor(TypedDict):
    """`measure_floor()`: µs of CPU per packet for receive + unprotect + protect + send, per round and median."""

    us_per_packet: float
    rounds_us_per_packet: list[float]
    packets: int
    srtp_bytes_mean: float
    srtp_profile: str


def rtp_packets(payloads: list[bytes], ssrc: int = 0x1234ABCD) -> list[bytes]:
    """Plain RTP packets as the bridge sends them: version 2, extension bit, Opus PT 111, MID extension."""
    out = []
    for i, payload in enumerate(payloads):
        header = struct.pack("!BBHII", 0x90, 111, i & 0xFFFF, (i * 960) & 0xFFFFFFFF, ssrc)
        out.append(header + _MID_EXTENSION + payload)
    return out


def srtp_sessions(inbound_key: bytes | None = None) -> tuple[Session, Session, Session, str]:
    """(producer protect, bridge unprotect, bridge protect) sessions, set up as aiortc sets up a leg's; the
    producer and the bridge's unprotect share inbound_key (random if None), the bridge's protect has its own."""
    from aiortc.rtcdtlstransport import SRTP_PROFILES
    from pylibsrtp import Policy, Session

    profile = SRTP_PROFILES[0]  # aiortc offers its list in order; between two aiortc peers the first one wins
    size = profile.key_length + profile.salt_length

    def session(key: bytes, ssrc_type: int) -> Session:
        policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        return Session(policy)

    inbound_key, outbound_key = inbound_key or os.urandom(size), os.urandom(size)
    return (
        session(inbound_key, Policy.SSRC_ANY_OUTBOUND),
        session(inbound_key, Policy.SSRC_ANY_INBOUND),
        session(outbound_key, Policy.SSRC_ANY_OUTBOUND),
        profile.openssl_profile.decode(),
    )


def measure_floor(
    payloads: list[bytes] | None = None, rounds: int = ROUNDS, packets_per_round: int = PACKETS_PER_ROUND
) -> Floor:
    """Forward rounds x packets_per_round real SRTP packets over loopback; the median round is the floor."""
    if payloads is None:
        from .load import noise_packets

        payloads = noise_packets()
    if rounds < 1 or packets_per_round < BATCH or not payloads:
        raise ValueError("measure_floor: needs at least one round of one batch and some payloads")
    total = rounds * packets_per_round
    if total > 0xFFFF:
        raise ValueError("measure_floor: at most 65535 packets (one sequence-number cycle)")
    producer, rx, tx, profile = srtp_sessions()
    plain = rtp_packets([payloads[i % len(payloads)] for i in range(total)])
    wire = [producer.protect(p) for p in plain]
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    source, bridge, sink = socks
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        bridge_addr, sink_addr = bridge.getsockname(), sink.getsockname()
        recvfrom, sendto = bridge.recvfrom, bridge.sendto
        unprotect, protect = rx.unprotect, tx.protect
        rounds_us: list[float] = []
        sent_bytes = 0
        i = 0
        for _ in range(rounds):
            cpu_ns = 0
            for _ in range(packets_per_round // BATCH):
                for data in wire[i : i + BATCH]:
                    source.sendto(data, bridge_addr)
                i += BATCH
                t0 = time.process_time_ns()
                for _ in range(BATCH):  # the unavoidable work of a forwarded packet, nothing else
                    data, _addr = recvfrom(2048)
                    sendto(protect(unprotect(data)), sink_addr)
                cpu_ns += time.process_time_ns() - t0
                for _ in range(BATCH):
                    sent_bytes += len(sink.recv(2048))
            rounds_us.append(cpu_ns / 1000 / (packets_per_round // BATCH * BATCH))
    finally:
        for s in socks:
            s.close()
    forwarded = rounds * (packets_per_round // BATCH * BATCH)
    return {
        "us_per_packet": round(statistics.median(rounds_us), 2),
        "rounds_us_per_packet": [round(x, 2) for x in rounds_us],
        "packets": forwarded,
        "srtp_bytes_mean": round(sent_bytes / forwarded, 1),
        "srtp_profile": profile,
    }
