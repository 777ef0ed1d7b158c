"""The commands that run the bridge for a person: `voicebridge call` (one call, start to hang-up) and `voicebridge
serve` (the console and its REST API). Each picks the Realtime backend (backend.py), installs signal handlers and
prints what it does; bridge/ and signaling/ hold what they run and know nothing of processes or terminals."""
