"""voicebridge: two OpenAI Realtime voice agents on one call, relayed over WebRTC."""

__version__ = "0.1.0"
