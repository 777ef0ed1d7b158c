"""libopus's own decoder, through ctypes: what PyAV's decoder cannot do, concealing a lost packet.

FFmpeg's libopus wrapper hands libopus every packet it gets and has no way to say "this one never arrived", so a
listener decoding through PyAV can only skip a lost packet: the audio closes up over the hole and a word with a
few holes in it is no longer a word pocketsphinx's grammar can read. libopus itself conceals a loss when it is
asked to decode nothing (packet loss concealment: it extends the last pitch period and fades it), and decodes the
in-band FEC copy (LBRR) of a lost frame that the next packet may carry (`decode_fec=1`; without one that is PLC
too). Both are one call to `opus_decode`, so this binds the libopus PyAV already ships (av.libs; the system's
libopus0 otherwise).

A decoder may run at any of Opus's rates and either channel count: the listener decodes straight to the VAD's
16 kHz mono (libopus's own band limiting and downmix), half the CPU of decoding 48 kHz stereo and resampling it
(measured: ~95 against ~190 us a packet through the VAD), and the recogniser hears the built-in lines as well.

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

RATE = 48000  # the RTP clock of Opus, whatever rate it is decoded at
CHANNELS = 2  # WebRTC negotiates opus/48000/2; a mono stream decodes to two equal channels
MAX_SAMPLES = 5760  # 120 ms at 48 kHz: the longest Opus packet
RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus decodes to


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
    """One stream's decoder: int16 at `rate`, `channels` interleaved (L R L R ...)."""

    def __init__(self, rate: int = RATE, channels: int = CHANNELS) -> None:
        if rate not in RATES or channels not in (1, 2):
            raise ValueError(f"libopus decodes to {RATES} Hz, 1 or 2 channels; not {rate} Hz, {channels}")
        lib = _lib()
        err = ctypes.c_int(0)
        handle = lib.opus_decoder_create(rate, channels, ctypes.byref(err))
        if err.value != 0 or not handle:
            raise OpusUnavailable(f"opus_decoder_create failed: {lib.opus_strerror(err.value).decode()}")
        self.rate, self.channels = rate, channels
        self._lib = lib
        self._handle = ctypes.c_void_p(handle)
        self._max = MAX_SAMPLES * rate // RATE
        self._out = (ctypes.c_int16 * (self._max * channels))()

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        """A packet's audio."""
        if not payload:
            raise OpusDecodeError("an empty packet")
        return self._call(payload, self._max, fec=False)

    def conceal(self, samples: int) -> npt.NDArray[np.int16]:
        """libopus's concealment for a packet of `samples` (on the 48 kHz RTP clock, a multiple of 120) that never
        arrived."""
        return self._call(None, samples * self.rate // RATE, fec=False)

    def recover(self, next_payload: bytes, samples: int) -> npt.NDArray[np.int16]:
        """The lost packet (of `samples` on the 48 kHz clock) before `next_payload`, from that packet's in-band
        FEC copy when it has one (else concealed). `next_payload` itself is decoded afterwards as usual."""
        return self._call(next_payload, samples * self.rate // RATE, fec=True)

    def _call(self, payload: bytes | None, samples: int, fec: bool) -> npt.NDArray[np.int16]:
        n = self._lib.opus_decode(
            self._handle, payload, len(payload) if payload else 0, self._out, samples, 1 if fec else 0
        )
        if n < 0:
            raise OpusDecodeError(self._lib.opus_strerror(n).decode())
        return np.ctypeslib.as_array(self._out)[: n * self.channels].copy()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            self._lib.opus_decoder_destroy(handle)
            self._handle = ctypes.c_void_p(None)
