"""Several "machines" on one: network namespaces joined by a bridge, inside the suite's loopback-only namespace.

`make test` runs the suite in a network namespace that has only loopback (scripts/loopback-netns). Inside it, a
`HostNetwork` makes a Linux bridge with a private /24 (10.99.N.0/24, N from this process so parallel test processes
never share one) and, for each host, a child network namespace with loopback and one end of a veth pair, whose other
end is on the bridge. Every host then has exactly two addresses, 127.0.0.1 and its own 10.99.N.x, and reaches the
others only through the bridge; the test process itself is on the bridge too, at 10.99.N.1 (the "client machine":
the test's HTTP requests and its browser). Nothing can reach the machine's real interfaces: they are not in the
enclosing namespace at all, and none of these has a default route.

A host is a process (`sleep`) holding its namespace; commands run in it through `nsenter --net` (no mount or pid
namespace: they see the same files, so a worker on host B writes its artifacts where the test can read them, as
a shared disk would). It needs root (CI runs as root) and refuses to run outside the loopback-only namespace, where
the bridge would sit beside the machine's real interfaces.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_PR_SET_PDEATHSIG = 1


class HostsUnavailable(RuntimeError):
    """This process cannot make network namespaces here (not root, or not in the loopback-only namespace)."""


def _die_with_parent() -> None:
    # A host must not outlive the test process (a killed pytest would leave its namespaces behind).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _ip(*args: str, pid: int | None = None) -> None:
    argv = ["ip", *args] if pid is None else ["nsenter", "-t", str(pid), "--net", "--", "ip", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    address: str
    holder: subprocess.Popen[bytes]
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.holder.pid

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv run in this host's network namespace (nsenter executes it: the process is argv itself)."""
        return ["nsenter", "-t", str(self.pid), "--net", "--", *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process on this host; it is killed when the network is torn down, if still running."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=False)


# The links this module makes (the bridge `vbhPID`, its veths `vbhPID-N`) in the suite's loopback-only namespace:
# private addresses with no route out, so a namespace holding them is still the loopback-only one. Other tests
# running meanwhile (xdist) see them and must not take them for the machine's real interfaces.
LINK_PREFIX = "vbh"


class HostNetwork:
    """`with HostNetwork() as net: a = net.add_host("a")`: hosts at 10.99.N.10, .11, ... on one bridge."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise HostsUnavailable("network namespaces for hosts need root (CI runs the suite as root)")
        for tool in ("ip", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise HostsUnavailable(f"`{tool}` is missing (iproute2, util-linux)")
        others = [n for _, n in socket.if_nameindex() if n != "lo" and not n.startswith(LINK_PREFIX)]
        if others:
            raise HostsUnavailable(
                f"hosts are made only inside the loopback-only namespace (this one also has {others}): run the "
                "tests with `make test`, or `scripts/loopback-netns .venv/bin/python -m pytest ...`"
            )
        self.tag = f"{LINK_PREFIX}{os.getpid() % 100000}"
        self.subnet = f"10.99.{os.getpid() % 250 + 1}"
        self.address = f"{self.subnet}.1"  # this process, the "client machine"
        self.hosts: list[Host] = []
        self._bridge = False

    def __enter__(self) -> HostNetwork:
        try:
            _ip("link", "add", self.tag, "type", "bridge")
            self._bridge = True
            _ip("addr", "add", f"{self.address}/24", "dev", self.tag)
            _ip("link", "set", self.tag, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        index = len(self.hosts)
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, preexec_fn=_die_with_parent,
        )
        # The holder says "ready" once it is in its own namespace with loopback up; a dead one closes the pipe.
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"host {name}: unshare --net failed (status {holder.wait()})")
        host = Host(name, f"{self.subnet}.{10 + index}", holder)
        self.hosts.append(host)
        outer = f"{self.tag}-{index}"
        _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", str(holder.pid))
        _ip("link", "set", outer, "master", self.tag, "up")
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", pid=holder.pid)
        _ip("link", "set", "eth0", "up", pid=holder.pid)
        # No IPv6 (not even link-local): every host has exactly the one address it was given on the bridge.
        off = subprocess.run(
            host.command(["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"]), check=False,
            capture_output=True,
        )
        if off.returncode != 0:
            raise RuntimeError(f"host {name}: could not turn IPv6 off: {off.stderr.decode().strip()}")
        return host

    def close(self) -> None:
        for host in reversed(self.hosts):
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
            if host.holder.poll() is None:
                host.holder.kill()  # its namespace goes with it, and the veth pair with the namespace
            host.holder.wait()
            if host.holder.stdout is not None:
                host.holder.stdout.close()
        self.hosts.clear()
        if self._bridge:
            subprocess.run(["ip", "link", "del", self.tag], capture_output=True, check=False)
            self._bridge = False
