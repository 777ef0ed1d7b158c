"""HTTPS for `voicebridge serve`: browsers only allow getUserMedia (the take-over microphone) in a secure
context, and http:// qualifies only on localhost. So:

- a loopback host (127.0.0.0/8, ::1, localhost) serves plain HTTP unless --cert/--key are given;
- any other host serves HTTPS, with --cert/--key or else certs/dev-cert.pem + certs/dev-key.pem in the working
  directory (where `make certs` writes them), and refuses to start (TlsError, with what to do) when they are
  missing or unreadable.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

CERTS_DIR = Path("certs")  # the working directory's, not the package's: an installed package has no checkout
DEFAULT_CERT = CERTS_DIR / "dev-cert.pem"
DEFAULT_KEY = CERTS_DIR / "dev-key.pem"


class TlsError(RuntimeError):
    """HTTPS is needed (or asked for) but cannot be set up; the message says why and how to fix it."""


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def server_ssl_context(host: str, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext | None:
    """The TLS context to serve `host` with, or None for plain HTTP (loopback and no cert given)."""
    if (cert is None) != (key is None):
        given, missing = ("--cert", "--key") if cert is not None else ("--key", "--cert")
        raise TlsError(f"{given} was given without {missing}: HTTPS needs both the certificate and its key")
    if cert is None and is_loopback_host(host):
        return None
    explicit = cert is not None
    cert_path, key_path = (cert, key) if cert is not None and key is not None else (DEFAULT_CERT, DEFAULT_KEY)
    missing_files = [str(p) for p in (cert_path, key_path) if not p.is_file()]
    if missing_files:
        why = (
            f"host {host!r} is not loopback, so the console must be served over HTTPS "
            "(browsers allow the microphone only in a secure context off localhost)"
            if not explicit
            else "HTTPS was asked for with --cert/--key"
        )
        raise TlsError(
            f"{why}, but {' and '.join(missing_files)} "
            f"{'does' if len(missing_files) == 1 else 'do'} not exist: run `make certs` "
            "(or pass --cert FILE --key FILE), or serve on 127.0.0.1"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as e:
        raise TlsError(
            f"cannot use {cert_path} with {key_path}: {e.reason or e} "
            "(both must be PEM, and the key must belong to the certificate)"
        ) from None
    except OSError as e:
        raise TlsError(f"cannot read {cert_path} or {key_path}: {e.strerror}") from None
    return ctx
