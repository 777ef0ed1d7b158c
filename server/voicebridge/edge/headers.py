"""Header text. aiohttp decodes header bytes as UTF-8 with `surrogateescape`, so a header that is not valid
UTF-8 arrives as a str with lone surrogates, which fails later wherever it is encoded again (comparing a token,
echoing an origin): a 500 far from the cause. Both servers refuse such a request first, naming the header."""

from __future__ import annotations

from collections.abc import Mapping


def undecodable_header(headers: Mapping[str, str]) -> str | None:
    """Why the first header that is not valid UTF-8 text is refused, or None when all are."""
    for name, value in headers.items():
        for what, text in (("name", name), ("value", value)):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
                shown = name.encode("ascii", "replace").decode("ascii")[:40]
                at = f" (byte 0x{byte:02x} at {e.start})" if byte is not None else ""
                return f"the {shown!r} header {what} is not valid UTF-8 text{at}; header values must be ASCII"
    return None
