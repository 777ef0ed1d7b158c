"""What each agent is told when its leg is made: the GA session object, the caller's one tool, the CS tools.

The session object is the same for OpenAI and the emulator (the emulator finds its persona by `instructions`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from voicebridge.config import Settings
from voicebridge.scenarios.model import Persona, Scenario, ScenarioError
from voicebridge.tools import ToolRegistry

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


def load_tools(scenario: Scenario, data_dir: Path, timeout_s: float) -> ToolRegistry:
    """Call the scenario's `module:function` factory with the call's folder."""
    if not scenario.tools:
        return ToolRegistry(timeout_s=timeout_s)
    module_name, _, attr = scenario.tools.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ScenarioError(
            f"{scenario.path or scenario.name}: `tools` = {scenario.tools!r} cannot be loaded: {e}"
        ) from e
    registry = factory(data_dir)
    if not isinstance(registry, ToolRegistry):
        raise ScenarioError(f"{scenario.tools} returned {type(registry).__name__}, not a ToolRegistry")
    return registry
