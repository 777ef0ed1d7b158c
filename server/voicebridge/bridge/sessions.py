"""What each agent is told when its leg is made: the GA session object, the caller's one tool, the CS tools.

The session object is the same for OpenAI and the emulator (the emulator finds its persona by `instructions`).
"""

from __future__ import annotations

from typing import Any

from voicebridge.config import Settings
from voicebridge.scenarios.model import Persona

HANGUP_TOOL = {
    "type": "function",
    "name": "hangup",
    "description": "End the phone call. Call it only after you have said goodbye.",
    "parameters": {"type": "object", "properties": {}, "required": []},
}
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"

def build_session(persona: Persona, settings: Settings, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The GA session object sent with the offer."""
    return {
        "type": "realtime",
        "model": settings.model,
        "instructions": persona.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "transcription": {"model": TRANSCRIPTION_MODEL},
                "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
            },
            "output": {"voice": persona.voice},
        },
        "tools": tools,
        "tool_choice": "auto",
    }
