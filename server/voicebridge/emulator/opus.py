"""libopus's own decoder, through ctypes: what PyAV's decoder cannot do, concealing a lost packet.

FFmpeg's libopus wrapper hands libopus every packet it gets and has no way to say "this one never arrived", so a
listener decoding through PyAV can only skip a lost packet: the audio closes up over the hole and a word with a
few holes in it is no longer a word pocketsphinx's grammar can read. libopus itself conceals a loss when it is
asked to decode nothing (packet loss concealment: it extends the last pitch period and fades it), and decodes the
in-band FEC copy (LBRR) of a lost frame that the next packet may carry (`decode_fec=1`; without one that is PLC
too). Both are one call to `opus_decode`, so this binds the libopus PyAV already ships (av.libs; the system's
libopus0 otherwise), the same library and version that decoded before: packets that arrive decode to the same PCM.

ctypes releases the GIL around every call into libopus.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

RATE = 48000
CHANNELS = 2  # WebRTC negotiates opus/48000/2; a mono stream decodes to two equal channels
MAX_SAMPLES = 5760  # 120 ms at 48 kHz: the longest Opus packet


class OpusUnavailable(RuntimeError):
    """No libopus could be loaded (neither PyAV's own nor the system's)."""


class OpusDecodeError(ValueError):
    """libopus refused a packet (the message is libopus's own)."""


@cache
def _lib() -> ctypes.CDLL:
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    candidates = [str(p) for p in sorted(bundled.glob("libopus*.so*"))]
    system = ctypes.util.find_library("opus")
    if system:
        candidates.append(system)
    errors: list[str] = []
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
            continue
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int16),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_strerror.argtypes = [ctypes.c_int]
        lib.opus_strerror.restype = ctypes.c_char_p
        return lib
    raise OpusUnavailable(
        "no libopus found (looked for PyAV's bundled copy in "
        f"{bundled} and the system's libopus0): {'; '.join(errors) or 'none present'}"
    )


class OpusDecoder:
    """One stream's decoder: 48 kHz stereo int16, interleaved (L R L R ...)."""

    def __init__(self) -> None:
        lib = _lib()
        err = ctypes.c_int(0)
        handle = lib.opus_decoder_create(RATE, CHANNELS, ctypes.byref(err))
        if err.value != 0 or not handle:
            raise OpusUnavailable(f"opus_decoder_create failed: {lib.opus_strerror(err.value).decode()}")
        self._lib = lib
        self._handle = ctypes.c_void_p(handle)
        self._out = (ctypes.c_int16 * (MAX_SAMPLES * CHANNELS))()

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        """A packet's audio."""
        if not payload:
            raise OpusDecodeError("an empty packet")
        return self._call(payload, MAX_SAMPLES, fec=False)

    def conceal(self, samples: int) -> npt.NDArray[np.int16]:
        """`samples` (48 kHz, a multiple of 120) of libopus's concealment for a packet that never arrived."""
        return self._call(None, samples, fec=False)

    def recover(self, next_payload: bytes, samples: int) -> npt.NDArray[np.int16]:
        """The lost packet before `next_payload`, from that packet's in-band FEC copy when it has one (else
        concealed). `next_payload` itself is decoded afterwards as usual."""
        return self._call(next_payload, samples, fec=True)

    def _call(self, payload: bytes | None, samples: int, fec: bool) -> npt.NDArray[np.int16]:
        n = self._lib.opus_decode(
            self._handle, payload, len(payload) if payload else 0, self._out, samples, 1 if fec else 0
        )
        if n < 0:
            raise OpusDecodeError(self._lib.opus_strerror(n).decode())
        return np.ctypeslib.as_array(self._out)[: n * CHANNELS].copy()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._lib.opus_decoder_destroy(handle)
            self._handle = ctypes.c_void_p(None)
