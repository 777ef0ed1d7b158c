"""The offline emulator of the Realtime GA API (see README.md here). It needs the `emulator` extra; checked on
import, so every way in (`voicebridge emulator`, the embedded emulator of `serve`, `call`, `batch`, `soak`) says
which extra is missing instead of failing on the first absent module."""

from voicebridge.extras import require

require("emulator")
