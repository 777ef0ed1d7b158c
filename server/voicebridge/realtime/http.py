"""The Realtime legs' HTTP clients: each leg its own, all of a process on one TLS context.

Why: every SDK client (``AsyncOpenAI``) builds an HTTP client, and every new HTTP client builds a fresh TLS context
(the system's CA bundle loaded again: ~20-30 ms of CPU, on the event loop, even for the emulator's plain http://).
A WebRTC call has two legs, so a burst of 50 calls starting together blocked the bridge's loop for ~3 s on it.
The context depends on nothing of the leg (the base URL and the key are the SDK client's), and one context may
serve connections on any loop or thread; each leg keeps its own client, bound to the loop it runs on and closed
with it, and they share the context.
"""

from __future__ import annotations

import functools
import ssl

import httpx2
from openai import DefaultAsyncHttpxClient


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The context the HTTP library would build for each client (SSL_CERT_FILE / SSL_CERT_DIR honoured, as read
    at the first leg), built once per process."""
    return httpx2.create_ssl_context()


def http_client() -> httpx2.AsyncClient:
    """A new HTTP client with the SDK's defaults (timeouts, connection limits, redirects) on the shared context."""
    return DefaultAsyncHttpxClient(verify=tls_context())
