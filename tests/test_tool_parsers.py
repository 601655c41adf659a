"""Each family's tool-call format read out of exact texts, whole and in every chunking of
1, 2 and 3 characters; the grammar that forces a call in it; the choice of a format from
a model's chat template."""

import json
from pathlib import Path

import pytest

from inference.tool_parsers import (
    PARSERS, DeepSeekParser, HermesParser, Llama3JsonParser, MistralParser, Phi4MiniParser, UnknownToolParser,
    detect_tool_parser, parse_tool_calls, select_tool_parser,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / ".zoo" / "templates"
NAMES = {"get_weather", "get_time"}
PARIS, ROME = {"city": "Paris"}, {"city": "Rome", "zone": "CET"}


def read(parser_class, text, names=NAMES, parallel=True, size=None):
    """(content or None, [(name, arguments)]) of ``text`` fed whole or ``size`` characters
    at a time; the streamed calls are the parser's calls."""
    parser = parser_class(names, parallel=parallel)
    pieces = [text] if size is None else [text[i:i + size] for i in range(0, len(text), size)]
    contents, streamed = [], []
    for piece in pieces:
        content, calls = parser.feed(piece)
        contents.append(content)
        streamed += calls
    contents.append(parser.finish())
    assert streamed == parser.calls
    content = "".join(contents).strip()
    return content or None, [(call.name, json.loads(call.arguments)) for call in parser.calls]


def same_in_every_chunking(parser_class, text, expected, **options):
    for size in (None, 1, 2, 3):
        assert read(parser_class, text, size=size, **options) == expected, f"chunks of {size}"


HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
HERMES_2 = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome", "zone": "CET"}}\n</tool_call>'
LLAMA = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
LLAMA_2 = '{"name": "get_time", "parameters": {"city": "Rome", "zone": "CET"}}'
MISTRAL = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
MISTRAL_2 = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
             '{"name": "get_time", "arguments": {"city": "Rome", "zone": "CET"}, "id": "a1B2c3D4e"}]')
MISTRAL_ARGS = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
MISTRAL_ARGS_2 = MISTRAL_ARGS + '[TOOL_CALLS]get_time[CALL_ID]a1B2c3D4e[ARGS]{"city": "Rome", "zone": "CET"}'
PHI = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
PHI_2 = ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
         '{"name": "get_time", "arguments": {"city": "Rome", "zone": "CET"}}]<|/tool_call|>')
DS_CALL = '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>'
DS_CALL_2 = ('<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"city": "Rome", "zone": "CET"}\n```'
             '<｜tool▁call▁end｜>')
DS = f"<｜tool▁calls▁begin｜>{DS_CALL}<｜tool▁calls▁end｜>"
DS_2 = f"<｜tool▁calls▁begin｜>{DS_CALL}\n{DS_CALL_2}<｜tool▁calls▁end｜>"
DS_V31_2 = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>\n'
            '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Rome", "zone": "CET"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
DS_V31 = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'

ONE = [("get_weather", PARIS)]
TWO = [("get_weather", PARIS), ("get_time", ROME)]

CASES = [  # (parser, a lone call, two calls as the format writes them)
    (HermesParser, HERMES, f"{HERMES}\n{HERMES_2}"),
    (Llama3JsonParser, LLAMA, f"{LLAMA}; {LLAMA_2}"),
    (MistralParser, MISTRAL, MISTRAL_2),
    (MistralParser, MISTRAL_ARGS, MISTRAL_ARGS_2),
    (Phi4MiniParser, PHI, PHI_2),
    (DeepSeekParser, DS, DS_2),
]
IDS = ["hermes", "llama3_json", "mistral", "mistral_args", "phi4_mini", "deepseek"]


@pytest.mark.parametrize("parser_class, one, two", CASES, ids=IDS)
def test_a_lone_call_has_no_content(parser_class, one, two):
    same_in_every_chunking(parser_class, one, (None, ONE))


@pytest.mark.parametrize("parser_class, one, two", CASES, ids=IDS)
def test_parallel_calls_are_each_a_call_and_only_the_first_without_parallel(parser_class, one, two):
    same_in_every_chunking(parser_class, two, (None, TWO))
    same_in_every_chunking(parser_class, two, (None, ONE), parallel=False)


@pytest.mark.parametrize("parser_class, one, two", [case for case in CASES if case[0] is not Llama3JsonParser],
                         ids=[i for i in IDS if i != "llama3_json"])
def test_content_before_and_after_a_call_is_content(parser_class, one, two):
    same_in_every_chunking(parser_class, f"Let me look.\n{one}\nDone.", ("Let me look.\nDone.", ONE))
    same_in_every_chunking(parser_class, f"I'll check. {two}", ("I'll check.", TWO))


def test_llama3_calls_follow_a_python_tag_and_text_first_is_content():
    same_in_every_chunking(Llama3JsonParser, f"<|python_tag|>{LLAMA}", (None, ONE))
    same_in_every_chunking(Llama3JsonParser, f"  <|python_tag|>{LLAMA};{LLAMA_2}", (None, TWO))
    same_in_every_chunking(Llama3JsonParser, f"{LLAMA}; ", (None, ONE))
    text = f"Here is the call: {LLAMA}"
    same_in_every_chunking(Llama3JsonParser, text, (text, []))
    same_in_every_chunking(Llama3JsonParser, f"{LLAMA}\nThat was it.", ("That was it.", ONE))
    same_in_every_chunking(Llama3JsonParser, '{"answer": 42}', ('{"answer": 42}', []))


def test_the_arguments_key_of_each_family_and_arguments_as_a_string():
    same_in_every_chunking(Llama3JsonParser, '{"name": "get_weather", "arguments": {"city": "Paris"}}', (None, ONE))
    same_in_every_chunking(
        HermesParser, '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>',
        (None, ONE))
    same_in_every_chunking(MistralParser, '[TOOL_CALLS] [{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]',
                           (None, ONE))


NOT_CALLS = [
    (HermesParser, "<tool_call>\nnot json\n</tool_call>"),
    (HermesParser, '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>'),
    (HermesParser, HERMES[:-5]),
    (HermesParser, "a < b and <tool_ is not a call"),
    (Llama3JsonParser, '{"name": "launch_rockets", "parameters": {}}'),
    (Llama3JsonParser, '{"name": "get_weather", "parameters": [1]}'),
    (Llama3JsonParser, '{"name": "get_weather", "parameters": {"city": "Pa'),
    (Llama3JsonParser, '<|python_tag|>get_weather.call(city="Paris")'),
    (MistralParser, '[TOOL_CALLS][{"name": "launch_rockets", "arguments": {}}]'),
    (MistralParser, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "x"}]'),
    (MistralParser, "[TOOL_CALLS][not json]"),
    (MistralParser, "[TOOL_CALLS]launch_rockets[ARGS]{}"),
    (MistralParser, "[TOOL_CALLS]get weather now"),
    (MistralParser, '[TOOL_CALLS]get_weather[ARGS]{"city": "Par'),
    (MistralParser, "[TOOL_CA"),
    (Phi4MiniParser, '<|tool_call|>[{"name": "launch_rockets", "arguments": {}}]<|/tool_call|>'),
    (Phi4MiniParser, "<|tool_call|>[oops]<|/tool_call|>"),
    (Phi4MiniParser, PHI[:-10]),
    (DeepSeekParser, DS.replace("get_weather", "launch_rockets")),
    (DeepSeekParser, DS.replace('{"city": "Paris"}', '{"city": ')),
    (DeepSeekParser, DS[:-20]),
    (DeepSeekParser, "<｜tool▁calls▁begin｜>function get_weather<｜tool▁calls▁end｜>"),
]


@pytest.mark.parametrize("parser_class, text", NOT_CALLS)
def test_what_is_not_a_call_of_an_offered_function_stays_content_as_written(parser_class, text):
    same_in_every_chunking(parser_class, text, (text.strip(), []))


def test_a_bad_region_between_calls_is_content_and_the_good_calls_are_calls():
    bad = '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>'
    same_in_every_chunking(HermesParser, f"{HERMES}\n{bad}\n{HERMES_2}", (bad, TWO))
    bad = "[TOOL_CALLS]nope[ARGS]{}"
    same_in_every_chunking(MistralParser, f"{MISTRAL_ARGS}{bad}", (bad, ONE))


def test_brackets_and_escaped_quotes_inside_strings_do_not_end_a_call():
    arguments = {"city": "Pa]r}i\\\"s{["}
    text = f"[TOOL_CALLS]get_weather[ARGS]{json.dumps(arguments)}"
    same_in_every_chunking(MistralParser, text, (None, [("get_weather", arguments)]))
    text = json.dumps({"name": "get_weather", "parameters": arguments})
    same_in_every_chunking(Llama3JsonParser, text, (None, [("get_weather", arguments)]))


def test_mistral_name_first_calls_are_read_without_the_args_marker_too():
    same_in_every_chunking(MistralParser, '[TOOL_CALLS]get_weather{"city": "Paris"}', (None, ONE))
    same_in_every_chunking(MistralParser, MISTRAL_ARGS_2.replace("[ARGS]", ""), (None, TWO))


def test_deepseek_v3_1_calls_without_the_fence_are_read():
    same_in_every_chunking(DeepSeekParser, DS_V31, (None, ONE))
    same_in_every_chunking(DeepSeekParser, DS_V31_2, (None, TWO))


def test_a_deepseek_model_is_forced_to_the_form_its_template_writes(tmp_path):
    for template, fenced in [("deepseek-ai-DeepSeek-V3.1.jinja", False), ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", True)]:
        (tmp_path / "chat_template.jinja").write_text((TEMPLATES / template).read_text())
        parsing = select_tool_parser(tmp_path)
        assert (parsing.name, parsing.variant) == ("deepseek", {"fenced": fenced})
        assert ("```json" in parsing.grammar(TOOLS, "required", False)) is fenced


@pytest.mark.parametrize("parser_class", PARSERS.values())
def test_no_part_of_a_marker_reaches_content_while_a_call_streams(parser_class):
    text = {HermesParser: HERMES, Llama3JsonParser: "<|python_tag|>" + LLAMA, MistralParser: MISTRAL_ARGS_2,
            Phi4MiniParser: PHI, DeepSeekParser: DS_2}[parser_class]
    for size in (1, 2, 3):
        parser = parser_class(NAMES)
        for start in range(0, len(text), size):
            content, _ = parser.feed(text[start:start + size])
            assert content == ""
        assert parser.finish() == ""


def test_parse_tool_calls_reads_a_whole_answer():
    content, calls = parse_tool_calls(f"Sure.\n{HERMES}", HermesParser(NAMES))
    assert content == "Sure." and [call.name for call in calls] == ["get_weather"]
    assert calls[0].arguments == '{"city": "Paris"}'


# --- grammars ----------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": name, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}} for name in ("get_weather", "get_time")]


def test_the_hermes_grammar_writes_the_markers_as_text_or_as_their_marker_tokens():
    grammar = HermesParser.grammar(TOOLS, {"name": "get_time"}, False)
    assert grammar.startswith('start: call\ncall: "<tool_call>\\n" body "\\n</tool_call>"\nbody: %json ')
    grammar = HermesParser.grammar(TOOLS, "required", True, {"<tool_call>": 7, "</tool_call>": 8})
    assert grammar.startswith('start: call ("\\n" call)*\ncall: <[7]> "\\n" body "\\n" <[8]>\nbody: %json ')


def test_each_grammar_names_the_chosen_function_in_its_format():
    llama = Llama3JsonParser.grammar(TOOLS, "required", True)
    assert llama.startswith('start: call ("; " call)*\ncall: %json ')
    schema = json.loads(llama.split("%json ", 1)[1])
    assert [body["properties"]["name"]["const"] for body in schema["anyOf"]] == ["get_weather", "get_time"]
    assert all(body["required"] == ["name", "parameters"] for body in schema["anyOf"])
    mistral = MistralParser.grammar(TOOLS, {"name": "get_time"}, False, {"[TOOL_CALLS]": 5})
    assert mistral.startswith('start: <[5]> "[" call "]"\ncall: %json ')
    mistral = MistralParser.grammar(TOOLS, "required", True, {"[TOOL_CALLS]": 5, "[ARGS]": 32}, args_form=True)
    assert mistral.splitlines()[:3] == ["start: call+", "call: call_0 | call_1", 'call_0: <[5]> "get_weather" <[32]> arguments_0']
    phi = Phi4MiniParser.grammar(TOOLS, "required", False, {"<|tool_call|>": 9, "<|/tool_call|>": 10})
    assert phi.startswith('start: <[9]> "[" call "]" <[10]>\ncall: %json ')
    deepseek = DeepSeekParser.grammar(TOOLS, {"name": "get_weather"}, True)
    assert deepseek.splitlines()[:3] == [
        'start: "<｜tool▁calls▁begin｜>" call ("\\n" call)* "<｜tool▁calls▁end｜>"', "call: call_0",
        'call_0: "<｜tool▁call▁begin｜>" "function" "<｜tool▁sep｜>" "get_weather\\n```json\\n" arguments_0 "\\n```" '
        '"<｜tool▁call▁end｜>"']


@pytest.mark.parametrize("parser_class, variant", [(HermesParser, {}), (Llama3JsonParser, {}), (MistralParser, {}),
                                                   (MistralParser, {"args_form": True}), (Phi4MiniParser, {}),
                                                   (DeepSeekParser, {}), (DeepSeekParser, {"fenced": False})])
def test_every_sentence_of_a_grammar_is_read_as_calls(parser_class, variant):
    """The grammar's own sentences (walked by llguidance on the byte level, each choice
    taken the first way) are calls to the parser: what is forced is what is read."""
    import llguidance

    grammar = parser_class.grammar(TOOLS, "required", True, **variant)
    matcher = llguidance.LLMatcher(llguidance.LLTokenizer("byte"), llguidance.LLMatcher.grammar_from_lark(grammar))
    assert not matcher.is_error(), matcher.get_error()
    examples = {HermesParser: f"{HERMES}\n{HERMES_2}", Llama3JsonParser: f"{LLAMA}; {LLAMA_2}",
                MistralParser: MISTRAL_ARGS_2 if variant else MISTRAL_2, Phi4MiniParser: PHI_2,
                DeepSeekParser: DS_2 if not variant else DS_V31_2}
    text = examples[parser_class].replace(', "zone": "CET"', "").replace(', "id": "a1B2c3D4e"', "").replace(
        "[CALL_ID]a1B2c3D4e", "")
    assert matcher.consume_tokens(list(text.encode())), matcher.get_error()
    assert matcher.is_accepting()
    assert read(parser_class, text)[1] == [("get_weather", PARIS), ("get_time", {"city": "Rome"})]


# --- choosing a model's format -------------------------------------------------------------

@pytest.mark.parametrize("template, expected", [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
    ("Qwen-Qwen3-0.6B.jinja", "hermes"),
    ("Qwen-QwQ-32B.jinja", "hermes"),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes"),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3_json"),
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3_json"),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3_json"),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "mistral"),
    ("unsloth-mistral-Devstral-Small-2507.jinja", "mistral"),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek"),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek"),
    ("google-gemma-2-2b-it.jinja", None),
    ("microsoft-Phi-3.5-mini-instruct.jinja", None),
    ("Qwen3-Coder.jinja", None),
    ("deepseek-ai-DeepSeek-V3.1.jinja", "deepseek"),
    ("ibm-granite-granite-4.0.jinja", "hermes"),
    ("ibm-granite-granite-3.3-2B-Instruct.jinja", None),  # <|tool_call|> without a closing marker
    ("meetkai-functionary-medium-v3.1.jinja", None),  # <|python_tag|>, but <function=...> calls
    ("MiniMax-M3.jinja", None),  # <tool_call> around <invoke> XML
])
def test_the_format_is_detected_from_the_real_chat_template(template, expected):
    assert detect_tool_parser((TEMPLATES / template).read_text()) == expected


def test_a_model_folder_gets_its_format_its_marker_tokens_and_its_variant(tmp_path):
    assert select_tool_parser(ROOT / "models" / "demo").name == "hermes"
    assert select_tool_parser(ROOT / "models" / "demo", "none") is None
    with pytest.raises(UnknownToolParser, match="unknown tool_parser 'hermez' \\(one of: auto, none, hermes, "):
        select_tool_parser(ROOT / "models" / "demo", "hermez")
    (tmp_path / "chat_template.jinja").write_text((TEMPLATES / "Mistral-Small-3.2-24B-Instruct-2506.jinja").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 5, "content": "[TOOL_CALLS]", "special": True}, {"id": 32, "content": "[ARGS]", "special": True},
        {"id": 2, "content": "</s>", "special": True}]}))
    parsing = select_tool_parser(tmp_path)
    assert (parsing.name, parsing.marker_tokens, parsing.variant) == (
        "mistral", {"[TOOL_CALLS]": 5, "[ARGS]": 32}, {"args_form": True})
    assert select_tool_parser(tmp_path, "phi4_mini").name == "phi4_mini"


def test_a_template_that_names_no_format_leaves_it_to_the_tokenizers_markers(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}")
    tokens = [{"id": 200025, "content": "<|tool_call|>", "special": True}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": tokens}))
    assert select_tool_parser(tmp_path) is None  # an opening marker alone (Granite 3) is no known format
    tokens.append({"id": 200026, "content": "<|/tool_call|>", "special": True})
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": tokens}))
    parsing = select_tool_parser(tmp_path)
    assert (parsing.name, parsing.marker_tokens) == ("phi4_mini", {"<|tool_call|>": 200025, "<|/tool_call|>": 200026})
