"""Reading Hermes-style tool calls out of a model's text (inference/tool_parsers.py
HermesParser), whole or as it streams."""

import json
import re

import pytest

from inference.tool_parsers import HermesParser, parse_tool_calls

NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_a_lone_call_has_no_content():
    content, calls = parse_tool_calls(CALL, HermesParser(NAMES))
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    # 9 letters and digits: the only ids Mistral's chat templates accept.
    assert re.fullmatch(r"[A-Za-z0-9]{9}", calls[0].id)


def test_text_before_a_call_is_content_and_two_calls_are_two():
    second = CALL.replace("get_weather", "get_time").replace("Paris", "Rome")
    content, calls = parse_tool_calls(f"Let me look.\n{CALL}\n{second}", HermesParser(NAMES))
    assert content == "Let me look."
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert parse_tool_calls(f"{CALL}\n{second}", HermesParser(NAMES, parallel=False))[1][0].name == "get_weather"
    assert len(parse_tool_calls(f"{CALL}\n{second}", HermesParser(NAMES, parallel=False))[1]) == 1


@pytest.mark.parametrize("text", [
    "<tool_call>\nnot json\n</tool_call>",
    '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # never closed
    "a < b and <tool_ is not a call",
])
def test_what_is_not_a_call_of_an_offered_tool_stays_text(text):
    assert parse_tool_calls(text, HermesParser(NAMES)) == (text.strip(), [])


def test_streamed_pieces_give_the_same_content_and_calls_holding_back_a_possible_opening():
    text = f"Sure. {CALL}"
    parser = HermesParser(NAMES)
    contents, calls = [], []
    for piece in [text[i:i + 3] for i in range(0, len(text), 3)]:
        content, new = parser.feed(piece)
        assert "<" not in content  # never a part of the opening tag
        contents.append(content)
        calls += new
    contents.append(parser.finish())
    assert "".join(contents).strip() == "Sure."
    assert [c.name for c in calls] == ["get_weather"]


def test_arguments_written_as_a_string_are_read_as_the_object():
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>', HermesParser(NAMES))
    assert json.loads(calls[0].arguments) == {"city": "Rome"}


def test_the_grammar_names_only_the_chosen_function_and_its_schema():
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}} for n in ("get_weather", "get_time")]
    named = HermesParser.grammar(tools, {"name": "get_time"}, False)
    assert named.startswith('start: call\ncall: "<tool_call>\\n" body "\\n</tool_call>"\nbody: %json ')
    schema = json.loads(named.split("%json ", 1)[1])
    assert schema["properties"]["name"] == {"const": "get_time"}
    assert schema["properties"]["arguments"]["required"] == ["city"]
    required = HermesParser.grammar(tools, "required", True)
    assert required.startswith('start: call ("\\n" call)*\n')
    assert [b["properties"]["name"]["const"] for b in json.loads(required.split("%json ", 1)[1])["anyOf"]] == [
        "get_weather", "get_time"]
