"""The script engine: rule matching, once/silent rules, the generic reply, templates and their filters."""

from __future__ import annotations

import json

import pytest

from voicebridge.emulator.persona import GENERIC, GENERIC_REPLY, PersonaBook, Script
from voicebridge.scenarios.model import parse_scenario

pytestmark = pytest.mark.unit


def _persona_script(rules: list[dict[str, object]]) -> Script:
    scenario = parse_scenario(
        {
            "caller": {"instructions": "caller", "script": []},
            "cs": {"instructions": "agent", "script": rules},
        }
    )
    return Script(scenario.cs)


def test_last_phrase_in_transcript_order_wins() -> None:
    s = _persona_script(
        [
            {"hear": "hello there", "say": "Hi."},
            {"hear": "my order is late", "say": "Sorry."},
        ]
    )
    action = s.on_heard("My order is late. Hello there!")
    assert action is not None and action.say == "Hi."
    action = s.on_heard("hello there, my order is late")  # "hello there" fired once already
    assert action is not None and action.say == "Sorry."


def test_once_rules_fire_once_and_repeatable_rules_repeat() -> None:
    s = _persona_script([{"hear": "ping", "say": "pong", "once": False}, {"hear": "knock", "say": "who"}])
    assert [s.on_heard("ping").say for _ in range(3)] == ["pong"] * 3  # type: ignore[union-attr]
    assert s.on_heard("knock").say == "who"  # type: ignore[union-attr]
    assert s.on_heard("knock") is GENERIC


def test_silent_rule_stays_silent_and_unknown_speech_gets_the_generic_reply() -> None:
    s = _persona_script([{"hear": "goodbye"}])
    assert s.on_heard("goodbye") is None
    assert s.on_heard("what about the weather") is GENERIC
    assert s.on_heard(None) is GENERIC and GENERIC.say == GENERIC_REPLY
    assert s.on_heard("goodbyes") is GENERIC  # whole words only


def test_start_and_after_tool_with_templates_and_filters() -> None:
    s = _persona_script(
        [
            {"on": "start", "say": "Welcome."},
            {"hear": "refund please", "call": {"name": "issue_refund", "arguments": {"order_id": "4217"}}},
            {
                "after_tool": "issue_refund",
                "say": "Order {issue_refund.order_id|digits}: {issue_refund.amount|words} dollars, "
                "{issue_refund.note}.",
                "hangup": True,
            },
        ]
    )
    assert s.on_start().say == "Welcome."  # type: ignore[union-attr]
    call = s.on_heard("refund please")
    assert call is not None and call.call is not None and call.call.name == "issue_refund"
    s.record_output("issue_refund", json.dumps({"order_id": "4217", "amount": 42.0, "note": "done"}))
    answer = s.after_tool("issue_refund")
    assert answer is not None and answer.hangup
    assert answer.say == "Order four two one seven: forty-two dollars, done."
    assert s.render("{issue_refund.missing|words}") == "unknown"
    assert s.render("{nothing.here}") == "unknown"
    assert s.after_tool("unscripted_tool") is GENERIC


def test_persona_book_finds_by_stripped_instructions() -> None:
    book = PersonaBook()
    scenario = book.load("late_order")
    assert book.find("  " + scenario.cs.instructions + "\n") is scenario.cs
    assert book.find(scenario.caller.instructions) is scenario.caller
    assert book.find("someone else") is None and book.find(None) is None


def test_unknown_persona_speaks_the_generic_reply_and_hears_nothing() -> None:
    s = Script(None)
    assert s.phrases == []
    assert s.on_start() is GENERIC
    assert s.on_heard("anything") is GENERIC


def test_seeded_user_text_does_not_stop_the_persona_speaking_first() -> None:
    """Context the bridge seeds before the first turn is background, not something heard: the start rule fires."""
    s = _persona_script([{"on": "start", "say": "Welcome."}, {"hear": "refund please", "say": "Sure."}])
    action = s.on_typed("Caller ID: +1 555 0100 (registered customer Sam Lee).")
    assert action is not None and action.say == "Welcome."


def test_scripted_phrase_in_user_text_is_answered_like_speech() -> None:
    s = _persona_script([{"on": "start", "say": "Welcome."}, {"hear": "refund please", "say": "Sure."}])
    action = s.on_typed("Refund please!")
    assert action is not None and action.say == "Sure."


def test_a_barge_in_rule_cuts_in_once_its_delay_has_passed_and_never_answers_a_finished_turn() -> None:
    s = _persona_script([{"interrupt_after_ms": 1500, "say": "Sorry to cut in."}, {"hear": "hello", "say": "Hi."}])
    assert s.interrupts
    assert s.cut_in(1480) is None  # not yet
    action = s.cut_in(1500)
    assert action is not None and action.say == "Sorry to cut in."
    assert s.cut_in(5000) is None  # once
    assert s.on_heard("hello").say == "Hi."  # type: ignore[union-attr]
    assert not _persona_script([{"hear": "hello", "say": "Hi."}]).interrupts


def test_a_barge_in_rule_with_hear_is_armed_by_that_phrase_in_an_earlier_turn_and_does_not_answer_it() -> None:
    s = _persona_script([{"hear": "order number", "interrupt_after_ms": 800, "say": "It is four two one seven."}])
    assert "order number" in s.phrases  # the recognizer must hear what arms it
    assert s.cut_in(2000) is None
    assert s.on_heard("what is your order number") is GENERIC  # heard: it arms the rule but does not answer
    s.note_heard("what is your order number")
    assert s.scratch().cut_in(900) is not None and s.cut_in(700) is None  # a scratch copy knows it is armed
    action = s.cut_in(800)
    assert action is not None and action.say == "It is four two one seven."


def test_the_generic_reply_heard_asks_for_the_last_line_again() -> None:
    """A line the other side did not catch (a lossy network) is repeated when it says so, tool calls not redone."""
    from voicebridge.scenarios import normalize_phrase

    s = _persona_script(
        [
            {"hear": "hello there", "say": "Hi, what is your order number?"},
            {"hear": "four two one seven", "call": {"name": "lookup_order", "arguments": {"order_id": "4217"}}},
        ]
    )
    assert normalize_phrase(GENERIC_REPLY) in s.phrases  # the recognizer can hear it
    assert s.on_heard(normalize_phrase(GENERIC_REPLY)) is GENERIC  # nothing said yet: nothing to repeat
    assert s.on_heard("hello there").say == "Hi, what is your order number?"  # type: ignore[union-attr]
    again = s.on_heard(normalize_phrase(GENERIC_REPLY))
    assert again is not None and again.say == "Hi, what is your order number?" and again.call is None
    assert s.on_heard("four two one seven").call is not None  # type: ignore[union-attr]
    again = s.on_heard(normalize_phrase(GENERIC_REPLY))  # a tool call is not a line: the last line still is
    assert again is not None and again.say == "Hi, what is your order number?" and again.call is None
    assert _persona_script([{"hear": "goodbye"}]).phrases == ["goodbye"]  # nothing to repeat: not listened for


def test_asked_back_after_asking_it_asks_again_in_other_words_and_that_gets_the_last_line() -> None:
    """The other side missed this persona's question and asked back: it asks again ("I was asking you") rather
    than repeating an older line of its script; told so, the other side says its own last line again."""
    from voicebridge.emulator.persona import ASK_AGAIN, ASK_AGAIN_REPLY, FALLBACK_PHRASES
    from voicebridge.scenarios import normalize_phrase

    caller = [{"hear": "which one", "say": "Four."}]
    agent_script = [{"on": "start", "say": "Welcome."}, {"hear": "my order", "say": "Which one?"}]
    scenario = parse_scenario(
        {"caller": {"instructions": "c", "script": caller}, "cs": {"instructions": "a", "script": agent_script}}
    )
    agent = Script(scenario.cs)
    assert set(FALLBACK_PHRASES) <= set(agent.phrases)  # it hears both questions
    assert agent.on_start().say == "Welcome."  # type: ignore[union-attr]
    assert agent.on_heard("") is GENERIC  # the caller's line was lost: ask
    assert agent.on_heard(normalize_phrase(GENERIC_REPLY)) is ASK_AGAIN  # not "Welcome." again
    assert agent.on_heard(normalize_phrase(GENERIC_REPLY)) is ASK_AGAIN
    assert agent.on_heard("my order").say == "Which one?"  # type: ignore[union-attr]
    again = agent.on_heard(normalize_phrase(ASK_AGAIN_REPLY))  # it was asked for its line: the last one
    assert again is not None and again.say == "Which one?"
    assert agent.on_heard(normalize_phrase(GENERIC_REPLY)).say == "Which one?"  # type: ignore[union-attr]


def test_after_max_repeats_in_a_row_a_persona_that_can_hang_up_gives_up_and_one_that_cannot_goes_on() -> None:
    from voicebridge.emulator.persona import GIVE_UP, GIVE_UP_REPLY, MAX_REPEATS
    from voicebridge.scenarios import normalize_phrase

    caller = _persona_script([{"hear": "welcome", "say": "My order is late."}, {"hear": "refunded", "hangup": True}])
    agent = _persona_script([{"on": "start", "say": "Welcome."}])
    assert caller.can_hang_up and not agent.can_hang_up
    assert caller.on_heard("welcome").say == "My order is late."  # type: ignore[union-attr]
    asked = normalize_phrase(GENERIC_REPLY)
    replies = [caller.on_heard(asked) for _ in range(MAX_REPEATS + 1)]
    assert [r.say for r in replies[:MAX_REPEATS]] == ["My order is late."] * MAX_REPEATS  # type: ignore[union-attr]
    assert replies[MAX_REPEATS] is GIVE_UP and GIVE_UP.hangup and GIVE_UP.say == GIVE_UP_REPLY
    assert [agent.on_heard("") for _ in range(MAX_REPEATS + 3)] == [GENERIC] * (MAX_REPEATS + 3)
    # Progress resets the count: a rule that fires starts it again from zero.
    caller = _persona_script([{"hear": "welcome", "say": "Hi."}, {"hear": "which one", "say": "Four."}])
    for _ in range(MAX_REPEATS):
        caller.on_heard("")
    assert caller.on_heard("welcome").say == "Hi."  # type: ignore[union-attr]
    assert [caller.on_heard("") for _ in range(MAX_REPEATS)] == [GENERIC] * MAX_REPEATS
    # Giving up is not in the grammar (the call ends with it; garbled audio is never taken for it).
    assert normalize_phrase(GIVE_UP_REPLY) not in caller.phrases + agent.phrases


def test_a_line_the_other_persona_cannot_understand_is_not_repeated_when_it_is_asked_for_by_name() -> None:
    """barge_in's greeting is outside the caller's grammar (the caller only cuts into it). Told "I was asking
    you", the agent asks the caller to speak rather than say the greeting again; asked "say it again", it does say
    it (a caller that has not cut in yet will); a line the caller knows is repeated either way."""
    from voicebridge.emulator.persona import ASK_AGAIN, ASK_AGAIN_REPLY
    from voicebridge.scenarios import load_scenario, normalize_phrase

    scenario = load_scenario("barge_in")
    agent = Script(scenario.cs)
    greeting = agent.on_start()
    assert greeting is not None and greeting.say and not agent.understood(greeting.say)
    assert agent.on_heard(normalize_phrase(ASK_AGAIN_REPLY)) is ASK_AGAIN
    assert agent.on_heard(normalize_phrase(GENERIC_REPLY)) is ASK_AGAIN  # it asked last: it asks again
    fresh = Script(scenario.cs)
    fresh.on_start()
    assert fresh.on_heard(normalize_phrase(GENERIC_REPLY)).say == greeting.say  # type: ignore[union-attr]
    caller = Script(scenario.caller)
    cut_in = caller.cut_in(5000)
    assert cut_in is not None and cut_in.say and caller.understood(cut_in.say)
    assert caller.on_heard(normalize_phrase(ASK_AGAIN_REPLY)).say == cut_in.say  # type: ignore[union-attr]
    assert Script(parse_scenario({"caller": {"instructions": "c"}, "cs": {"instructions": "a"}}).cs).understood("x")
