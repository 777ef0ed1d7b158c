"""Scenarios: the personas of a call, their instructions and context, and the emulator's scripts for them."""

from .model import (
    ROLES,
    ContextMessage,
    Persona,
    Role,
    Scenario,
    ScenarioError,
    ScriptRule,
    ToolCallStep,
    builtin_names,
    load_scenario,
    normalize_phrase,
    parse_scenario,
)

__all__ = [
    "ROLES",
    "ContextMessage",
    "Persona",
    "Role",
    "Scenario",
    "ScenarioError",
    "ScriptRule",
    "ToolCallStep",
    "builtin_names",
    "load_scenario",
    "normalize_phrase",
    "parse_scenario",
]
