"""A `response.create`'s parameters resolved against the session: where the response goes (`conversation`:
`auto`, the default conversation, or `none`, out of band), what it is made of (`output_modalities`,
`audio.output`, `max_output_tokens`), and what the persona answers (what is new in the default conversation,
or the response's own `input` items).

An out-of-band response leaves no trace: its items are not added to the conversation (no conversation.item.*
events, `conversation_id` null in the response), and it answers on a scratch copy of the script, so a `once`
rule it matched still fires later in the conversation, and what was heard since the last in-band response is
still answered by the next one. It may run while an in-band response is active, as on the real API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .persona import Action, Script
from .schema import ApiError
from .state import SessionState

MAX_OUTPUT_TOKENS = (1, 4096)  # the SDK's documented range; or "inf"
MODALITIES = (["audio"], ["text"])  # the only combinations the GA API accepts


@dataclass(frozen=True)
class Settings:
    in_conversation: bool
    modalities: list[str]  # ["audio"] or ["text"]
    max_output_tokens: int | None  # None: "inf"
    audio_format: dict[str, Any]  # the output format object, as the session holds it
    voice: str

    @property
    def audio(self) -> bool:
        return self.modalities == ["audio"]


def settings(s: SessionState, params: dict[str, Any]) -> Settings:
    """The response's settings: its own parameters over the session's. Raises ApiError for values the API
    refuses (checked before anything happens, so a refused response.create changes nothing)."""
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", "none", s.conversation_id):
        raise ApiError(
            400,
            f"Invalid value: '{conversation}'. Supported values are: 'auto' and 'none'.",
            code="invalid_value",
            param="response.conversation",
        )
    # The response's own values are checked here; the session's were accepted by session.update already, so an
    # odd one there (both modalities, say) is read leniently rather than failing every response after it.
    modalities = params.get("output_modalities")
    if modalities is None:
        modalities = ["text"] if s.config.get("output_modalities") == ["text"] else ["audio"]
    elif modalities not in MODALITIES:
        raise ApiError(
            400,
            f"Invalid modalities: {modalities}. Supported combinations are: ['text'] and ['audio'].",
            code="invalid_value",
            param="response.output_modalities",
        )
    lo, hi = MAX_OUTPUT_TOKENS
    limit = params.get("max_output_tokens")
    if limit is None:
        limit = s.config.get("max_output_tokens", "inf")
        limit = limit if _valid_limit(limit) else "inf"
    elif not _valid_limit(limit):
        raise ApiError(
            400,
            f"Invalid 'max_output_tokens': {limit!r}. Expected an integer between {lo} and {hi}, or 'inf'.",
            code="invalid_value",
            param="response.max_output_tokens",
        )
    session_out = (s.config.get("audio") or {}).get("output") or {}
    own_out = (params.get("audio") or {}).get("output") or {}
    fmt = own_out.get("format") or session_out.get("format") or {"type": "audio/pcm", "rate": 24000}
    voice = own_out.get("voice") or session_out.get("voice") or "marin"
    return Settings(
        in_conversation=conversation != "none",
        modalities=list(modalities),
        max_output_tokens=None if limit == "inf" else int(limit),
        audio_format=dict(fmt),
        voice=str(voice["id"]) if isinstance(voice, dict) else str(voice),
    )


def _valid_limit(limit: Any) -> bool:
    lo, hi = MAX_OUTPUT_TOKENS
    return limit == "inf" or (isinstance(limit, int) and not isinstance(limit, bool) and lo <= limit <= hi)


def resolve_input(s: SessionState, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The response's `input` items with `item_reference`s replaced by the session's items; None without
    `input` (the response then answers the default conversation)."""
    items = params.get("input")
    if items is None:
        return None
    resolved: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if item.get("type") == "item_reference":
            found = s.items.get(item["id"])
            if found is None:
                raise ApiError(
                    400,
                    f"Item with id '{item['id']}' not found.",
                    code="invalid_value",
                    param=f"response.input[{i}].id",
                )
            item = found
        resolved.append(item)
    return resolved


def action(s: SessionState, settings: Settings, items: list[dict[str, Any]] | None) -> Action | None:
    """What the persona does. Without `input`: an in-band response answers (and consumes) what is new in the
    default conversation; an out-of-band one answers the same on a scratch script and consumes nothing. With
    `input`: what is new in those items (after their last assistant message) is answered instead."""
    if items is None:
        if settings.in_conversation:
            return s.next_action()
        return s.script.scratch().respond(list(s.outputs), list(s.heard), list(s.typed))
    script = s.script if settings.in_conversation else s.script.scratch()
    return _respond_to_items(script, items, dict(s.call_names))


def _respond_to_items(script: Script, items: list[dict[str, Any]], call_names: dict[str, str]) -> Action | None:
    assistant = [i for i, it in enumerate(items) if it.get("type") == "message" and it.get("role") == "assistant"]
    new_from = assistant[-1] + 1 if assistant else 0
    outputs: list[str] = []
    heard: list[str] = []
    typed: list[str] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "function_call" and item.get("call_id"):
            call_names[item["call_id"]] = item.get("name", "")
        elif kind == "function_call_output":
            name = call_names.get(item.get("call_id", ""), "")
            if name:
                script.record_output(name, item.get("output", ""))  # earlier outputs still fill `{tool.field}`
            if i >= new_from:
                outputs.append(name)
        elif kind == "message" and item.get("role") == "user" and i >= new_from:
            for part in item.get("content") or []:
                if part.get("type") == "input_audio":
                    heard.append(part.get("transcript") or "")
                elif part.get("text"):
                    typed.append(part["text"])
    return script.respond(outputs, heard, typed)


def input_texts(items: list[dict[str, Any]]) -> list[str]:
    """The words a custom input holds (its `usage.input_token_details.text_tokens`)."""
    texts: list[str] = []
    for item in items:
        texts += [str(item.get(k) or "") for k in ("output", "arguments")]
        for part in item.get("content") or []:
            texts.append(str(part.get("text") or part.get("transcript") or ""))
    return texts
