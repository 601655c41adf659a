"""A hand-written corpus of hostile requests, each with the exact answer it must get.

Every request here is refused with a 4xx in OpenAI's error shape; ``status`` and
``code`` are exact. ``auth`` sends the test's API key as a Bearer token (a key without
the admin flag); the body is sent as given, byte for byte, over a raw socket
(tests/test_hostile_input.py), so nothing here is normalised by an HTTP client.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass

MODEL = "llmserver-demo"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class Hostile:
    category: str
    name: str
    status: int
    code: str | None  # the exact error code, None where the code is not the point
    method: str = "POST"
    path: str = CHAT
    body: bytes = b""
    auth: bool = True
    authorization: tuple[bytes, ...] = ()  # Authorization headers sent instead of the key
    content_type: bytes | None = b"application/json"
    content_length: int | None = None  # a Content-Length other than the body's (a lie)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    chunked: bool = False

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"


def _json(data) -> bytes:
    return json.dumps(data).encode()


def chat_body(**fields) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    body.update(fields)
    return body


def _chat(**fields) -> bytes:
    return _json(chat_body(**fields))


def _completion(**fields) -> bytes:
    return _json({"model": MODEL, "prompt": "Hello", "max_tokens": 4, **fields})


def _response(**fields) -> bytes:
    return _json({"model": MODEL, "input": "Hello", "max_output_tokens": 4, **fields})


def _with_raw(body: bytes, name: str, raw: str) -> bytes:
    """``body`` (a JSON object) with ``"name": raw`` added as raw JSON text."""
    return body[:-1] + f', "{name}": {raw}}}'.encode()


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def _nested_object(depth: int) -> dict:
    value: dict = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"a": value}}
    return value


CORPUS: list[Hostile] = []


def _add(*cases: Hostile) -> None:
    CORPUS.extend(cases)


# --- malformed and truncated JSON -------------------------------------------------------

_MALFORMED = {
    "open_brace": b"{",
    "key_only": b'{"model":',
    "trailing_comma": b'{"model": "x",}',
    "single_quotes": b"{'model': 'llmserver-demo'}",
    "bare_word": b"nul",
    "half_true": b"tru",
    "unclosed_array": b"[1, 2",
    "missing_colon": b'{"model" "x"}',
    "leading_zero": b'{"max_tokens": 01}',
    "bare_fraction": b'{"temperature": .5}',
    "empty_exponent": b'{"temperature": 1e}',
    "bad_escape": b'{"model": "\\x41"}',
    "short_unicode_escape": b'{"model": "\\u12"}',
    "raw_newline_in_string": b'{"model": "llm\nserver"}',
    "raw_tab_in_string": b'{"model": "llm\tserver"}',
    "trailing_garbage": _chat() + b" trailing",
    "two_documents": _chat() + _chat(),
    "comment": b"// a comment\n" + _chat(),
    "plus_sign": b'{"max_tokens": +1}',
    "hex_number": b'{"max_tokens": 0x10}',
    "undefined": b'{"temperature": undefined}',
    "only_whitespace": b"   \n\t  ",
    "nul_byte": b"\x00",
    "python_literal": b'{"stream": True}',
    "unquoted_key": b'{model: "llmserver-demo"}',
}
for _name, _body in _MALFORMED.items():
    _add(Hostile("malformed_json", _name, 400, "invalid_json", body=_body))
for _path in (COMPLETIONS, RESPONSES, "/tokenize", "/detokenize"):
    _add(Hostile("malformed_json", f"open_brace{_path.replace('/', '_')}", 400, "invalid_json", path=_path, body=b"{"),
         Hostile("malformed_json", f"single_quotes{_path.replace('/', '_')}", 400, "invalid_json", path=_path,
                 body=b"{'model': 'x'}"))

_VALID = _chat()
for _cut in (1, 2, 10, 17, 30, 45, 60, len(_VALID) - 1):
    _add(Hostile("truncated_json", f"chat_cut_at_{_cut}", 400, "invalid_json", body=_VALID[:_cut]))
_add(Hostile("truncated_json", "completion_cut", 400, "invalid_json", path=COMPLETIONS, body=_completion()[:-3]),
     Hostile("truncated_json", "response_cut", 400, "invalid_json", path=RESPONSES, body=_response()[:-1]),
     Hostile("truncated_json", "cut_inside_unicode_escape", 400, "invalid_json",
             body=_chat(messages=[{"role": "user", "content": "\u00e9"}]).split(b"\\u00e9")[0] + b"\\u00"))

# --- a body that is not an object ----------------------------------------------------------

for _name, _body in {"array": b"[]", "array_of_numbers": b"[1, 2]", "string": b'"hello"', "number": b"42",
                     "float": b"3.5", "true": b"true", "false": b"false", "null": b"null",
                     "array_of_bodies": b"[" + _chat() + b"]"}.items():
    _add(Hostile("not_an_object", _name, 400, "invalid_type", body=_body))
_add(Hostile("not_an_object", "empty_body", 400, "missing_required_parameter", body=b""),
     Hostile("not_an_object", "empty_object", 400, "missing_required_parameter", body=b"{}"),
     Hostile("not_an_object", "array_to_completions", 400, "invalid_type", path=COMPLETIONS, body=b"[1]"),
     Hostile("not_an_object", "string_to_responses", 400, "invalid_type", path=RESPONSES, body=b'"hi"'),
     Hostile("not_an_object", "number_to_tokenize", 400, "invalid_type", path="/tokenize", body=b"7"))

# --- NaN and Infinity as bare JSON tokens, huge and negative numbers --------------------------

for _field in ("temperature", "top_p", "max_tokens", "n", "seed", "top_k"):
    for _token in ("NaN", "Infinity", "-Infinity"):
        _add(Hostile("nan_infinity", f"{_field}_{_token}", 400, "invalid_json",
                     body=_with_raw(_json({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}),
                                    _field, _token)))
_add(Hostile("nan_infinity", "nan_in_message", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": [{"role": "user", "content": NaN}]}'),
     Hostile("nan_infinity", "nan_to_completions", 400, "invalid_json", path=COMPLETIONS,
             body=_with_raw(_completion(), "temperature", "NaN")),
     Hostile("nan_infinity", "infinity_to_responses", 400, "invalid_json", path=RESPONSES,
             body=_with_raw(_response(), "top_p", "Infinity")))

_MAX_TOKENS = {
    "10_pow_30": (10**30, "invalid_value"), "minus_one": (-1, "invalid_value"), "zero": (0, "invalid_value"),
    "one_and_a_half": (1.5, "invalid_type"), "string_5": ("5", "invalid_type"), "true": (True, "invalid_type"),
    "2_pow_31": (2**31, "invalid_value"), "minus_10_pow_30": (-(10**30), "invalid_value"),
    "list": ([4], "invalid_type"), "object": ({"n": 4}, "invalid_type"),
}
for _name, (_value, _code) in _MAX_TOKENS.items():
    _add(Hostile("numbers", f"max_tokens_{_name}", 400, _code, body=_chat(max_tokens=_value)),
         Hostile("numbers", f"completions_max_tokens_{_name}", 400, _code, path=COMPLETIONS,
                 body=_completion(max_tokens=_value)))
for _name, (_value, _code) in {"10_pow_30": (10**30, "invalid_value"), "zero": (0, "invalid_value"),
                               "half": (0.5, "invalid_type")}.items():
    _add(Hostile("numbers", f"max_output_tokens_{_name}", 400, _code, path=RESPONSES,
                 body=_response(max_output_tokens=_value)),
         Hostile("numbers", f"max_completion_tokens_{_name}", 400, _code, body=_chat(max_completion_tokens=_value)))
_add(Hostile("numbers", "top_k_1e400", 400, "invalid_type", body=_with_raw(_chat(), "top_k", "1e400")),
     Hostile("numbers", "max_tokens_5000_digits", 400, "invalid_json",
             body=_with_raw(_json({"model": MODEL, "messages": []}), "max_tokens", "9" * 5000)),
     Hostile("numbers", "max_tokens_400_digits", 400, "invalid_value",
             body=_with_raw(_json({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}),
                            "max_tokens", "9" * 400)))
for _name, (_value, _code) in {"10_pow_9": (10**9, "invalid_value"), "zero": (0, "invalid_value"),
                               "minus_five": (-5, "invalid_value"), "string": ("2", "invalid_type"),
                               "two_and_a_half": (2.5, "invalid_type"), "17": (17, "invalid_value")}.items():
    _add(Hostile("numbers", f"n_{_name}", 400, _code, body=_chat(n=_value)))
_add(Hostile("numbers", "n_times_prompts_over_128", 400, "invalid_value", path=COMPLETIONS,
             body=_completion(prompt=["a"] * 9, n=16)))
for _field in ("temperature", "top_p"):
    for _name, _raw, _code in (("400_digit_int", "9" * 400, "invalid_type"), ("1e400", "1e400", "invalid_type"),
                               ("minus_one", "-1", "invalid_value"), ("three", "3", "invalid_value"),
                               ("string", '"0.5"', "invalid_type"), ("true", "true", "invalid_type")):
        _add(Hostile("numbers", f"{_field}_{_name}", 400, _code, body=_with_raw(_chat(), _field, _raw)))
_add(Hostile("numbers", "responses_temperature_400_digit_int", 400, "invalid_type", path=RESPONSES,
             body=_with_raw(_response(), "temperature", "9" * 400)),
     Hostile("numbers", "completions_top_p_400_digit_int", 400, "invalid_type", path=COMPLETIONS,
             body=_with_raw(_completion(), "top_p", "9" * 400)))
for _name, (_value, _code) in {"10_pow_40": (10**40, "invalid_value"), "minus_10_pow_40": (-(10**40), "invalid_value"),
                               "fraction": (1.5, "invalid_type"), "string": ("1", "invalid_type")}.items():
    _add(Hostile("numbers", f"seed_{_name}", 400, _code, body=_chat(seed=_value)))
_add(Hostile("numbers", "top_k_10_pow_40", 400, "invalid_value", body=_chat(top_k=10**40)),
     Hostile("numbers", "top_k_negative", 400, "invalid_value", body=_chat(top_k=-1)),
     Hostile("numbers", "token_id_2_pow_31", 400, "invalid_type", path=COMPLETIONS, body=_completion(prompt=[2**31])),
     Hostile("numbers", "token_id_negative", 400, "invalid_type", path=COMPLETIONS, body=_completion(prompt=[-1])),
     Hostile("numbers", "token_id_out_of_vocabulary", 400, "invalid_value", path=COMPLETIONS,
             body=_completion(prompt=[2**31 - 1])),
     Hostile("numbers", "detokenize_token_10_pow_30", 400, "invalid_value", path="/detokenize",
             body=_json({"model": MODEL, "tokens": [10**30]})),
     Hostile("numbers", "detokenize_token_negative", 400, "invalid_value", path="/detokenize",
             body=_json({"model": MODEL, "tokens": [-1]})),
     Hostile("numbers", "detokenize_token_out_of_vocabulary", 400, "invalid_value", path="/detokenize",
             body=_json({"model": MODEL, "tokens": [99_999_999]})))

# --- deep nesting ----------------------------------------------------------------------------

_add(Hostile("deep_nesting", "messages_100000_arrays", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": ' + _nested(100_000).encode() + b"}"),
     Hostile("deep_nesting", "objects_50000", 400, "invalid_json", body=b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
     Hostile("deep_nesting", "arrays_500", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": ' + _nested(500).encode() + b"}"),
     Hostile("deep_nesting", "arrays_65", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": ' + _nested(64).encode() + b"}"),
     Hostile("deep_nesting", "tool_parameters_100_objects", 400, "invalid_json",
             body=_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": _nested_object(100)}}])),
     Hostile("deep_nesting", "tool_parameters_5000_objects", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                  b'"function", "function": {"name": "f", "parameters": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000
                  + b"}}]}"),
     Hostile("deep_nesting", "response_format_schema_300", 400, "invalid_json",
             body=_chat(response_format={"type": "json_schema",
                                         "json_schema": {"name": "x", "schema": _nested_object(300)}})),
     Hostile("deep_nesting", "completion_prompt_arrays_900", 400, "invalid_json", path=COMPLETIONS,
             body=b'{"model": "llmserver-demo", "prompt": ' + _nested(900).encode() + b"}"),
     Hostile("deep_nesting", "responses_text_format_200", 400, "invalid_json", path=RESPONSES,
             body=_response(text={"format": {"type": "json_schema", "name": "x", "schema": _nested_object(200)}})),
     Hostile("deep_nesting", "metadata_arrays_2000", 400, "invalid_json", path=RESPONSES,
             body=b'{"model": "llmserver-demo", "input": "hi", "metadata": {"a": ' + _nested(2000).encode() + b"}}"),
     Hostile("deep_nesting", "tokenize_messages_1000", 400, "invalid_json", path="/tokenize",
             body=b'{"model": "llmserver-demo", "messages": ' + _nested(1000).encode() + b"}"))

# --- 10 MB bodies -----------------------------------------------------------------------------

_BIG = b'{"model": "llmserver-demo", "messages": [{"role": "user", "content": "' + b"a" * TEN_MB + b'"}]}'
_add(Hostile("ten_mb_bodies", "chat_content_over_10_mb", 413, "request_too_large", body=_BIG),
     Hostile("ten_mb_bodies", "completions_over_10_mb", 413, "request_too_large", path=COMPLETIONS, body=_BIG),
     Hostile("ten_mb_bodies", "tokenize_over_10_mb", 413, "request_too_large", path="/tokenize", body=_BIG),
     Hostile("ten_mb_bodies", "without_a_key", 413, "request_too_large", auth=False, body=b"x" * (TEN_MB + 1)),
     Hostile("ten_mb_bodies", "as_text_plain", 413, "request_too_large", content_type=b"text/plain", body=_BIG),
     Hostile("ten_mb_bodies", "chunked_over_10_mb", 413, "request_too_large", body=_BIG, chunked=True),
     Hostile("ten_mb_bodies", "declared_over_10_mb_sent_small", 413, "request_too_large", body=b"{" * 1000,
             content_length=TEN_MB + 1),
     Hostile("ten_mb_bodies", "just_under_10_mb_of_junk", 400, "invalid_json", body=b"x" * (TEN_MB - 1)),
     Hostile("ten_mb_bodies", "2_mb_of_messages", 400, "context_length_exceeded",
             body=_json(chat_body(messages=[{"role": "user", "content": "a" * 1000}] * 2000))))

# --- invalid UTF-8, lone surrogates, BOM, charsets ----------------------------------------------

for _name, _bytes in {"ff": b"\xff", "fe_ff": b"\xfe\xff", "lone_continuation": b"\x80", "bad_second_byte": b"\xc3\x28",
                      "overlong_slash": b"\xc0\xaf", "encoded_surrogate": b"\xed\xa0\x80",
                      "truncated_three_byte": b"\xe2\x82", "five_byte_form": b"\xf8\x88\x80\x80\x80",
                      "latin1_e_acute": b"caf\xe9"}.items():
    _add(Hostile("invalid_utf8", _name, 400, "invalid_json",
                 body=b'{"model": "llmserver-demo", "messages": [{"role": "user", "content": "' + _bytes + b'"}]}'))
_add(Hostile("invalid_utf8", "in_model_name", 400, "invalid_json", body=b'{"model": "llm\xffserver"}'),
     Hostile("invalid_utf8", "in_key", 400, "invalid_json", body=b'{"mod\xffel": "x"}'),
     Hostile("invalid_utf8", "completions_prompt", 400, "invalid_json", path=COMPLETIONS,
             body=b'{"model": "llmserver-demo", "prompt": "\xff"}'))
_HI = '"messages": [{"role": "user", "content": "hi"}]'
for _name, _template in {"content": '{"model": "llmserver-demo", "messages": [{"role": "user", "content": "%s"}]}',
                         "model": '{"model": "%s", ' + _HI + "}",
                         "stop": '{"model": "llmserver-demo", ' + _HI + ', "stop": "%s"}',
                         "user": '{"model": "llmserver-demo", ' + _HI + ', "user": "%s"}',
                         "tool_name": '{"model": "llmserver-demo", ' + _HI + ', "tools": [{"type": "function", '
                                      '"function": {"name": "%s"}}]}',
                         "key": '{"model": "llmserver-demo", ' + _HI + ', "%s": 1}'}.items():
    for _surrogate in ("\\ud800", "\\udfff", "\\uDBFF\\u0041"):
        _add(Hostile("lone_surrogate", f"{_name}_{_surrogate[2:6].lower()}", 400, "invalid_json",
                     body=(_template % _surrogate).encode()))
_add(Hostile("lone_surrogate", "completions_prompt", 400, "invalid_json", path=COMPLETIONS,
             body=b'{"model": "llmserver-demo", "prompt": "\\ud800", "max_tokens": 2}'),
     Hostile("lone_surrogate", "responses_input", 400, "invalid_json", path=RESPONSES,
             body=b'{"model": "llmserver-demo", "input": "\\udc00", "max_output_tokens": 2}'),
     Hostile("lone_surrogate", "tokenize_prompt", 400, "invalid_json", path="/tokenize",
             body=b'{"model": "llmserver-demo", "prompt": "\\ud800"}'),
     Hostile("bom", "utf8_bom", 400, "invalid_json", body=b"\xef\xbb\xbf" + _chat()),
     Hostile("bom", "utf16_le_bom", 400, "invalid_json", body=b"\xff\xfe" + _chat().decode().encode("utf-16-le")),
     Hostile("bom", "utf16_body", 400, "invalid_json", body=_chat().decode().encode("utf-16")),
     Hostile("bom", "bom_in_the_middle", 400, "invalid_json", body=b'{"model": \xef\xbb\xbf"x"}'),
     Hostile("charset", "utf16_declared_utf8_sent", 400, "invalid_json",
             content_type=b"application/json; charset=utf-16", body=_chat()),
     Hostile("charset", "utf32_declared_utf8_sent", 400, "invalid_json",
             content_type=b"application/json; charset=utf-32", body=_chat()))

# --- duplicate keys ---------------------------------------------------------------------------

_add(Hostile("duplicate_keys", "model_twice", 400, "invalid_json",
             body=b'{"model": "other", "model": "llmserver-demo", "messages": [{"role": "user", "content": "Hello"}]}'),
     Hostile("duplicate_keys", "stream_twice", 400, "invalid_json", body=_with_raw(_chat(stream=False), "stream", "true")),
     Hostile("duplicate_keys", "role_twice_in_a_message", 400, "invalid_json",
             body=b'{"model": "llmserver-demo", "messages": [{"role": "system", "role": "user", "content": "x"}]}'),
     Hostile("duplicate_keys", "max_tokens_twice", 400, "invalid_json", body=_with_raw(_chat(), "max_tokens", "100")),
     Hostile("duplicate_keys", "completions_prompt_twice", 400, "invalid_json", path=COMPLETIONS,
             body=_with_raw(_completion(), "prompt", '"x"')),
     Hostile("duplicate_keys", "tool_parameters_key_twice", 400, "invalid_json",
             body=_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
             .replace(b'"parameters": {}', b'"parameters": {"type": "object", "type": "string"}')))

# --- thousands of messages, content parts --------------------------------------------------

_add(Hostile("messages", "5000_messages", 400, "context_length_exceeded",
             body=_chat(messages=[{"role": "user", "content": "hi"}] * 5000)),
     Hostile("messages", "50000_empty_messages", 400, "context_length_exceeded",
             body=_chat(messages=[{"role": "user", "content": ""}] * 50_000)),
     Hostile("messages", "5000_messages_with_a_bad_role_to_tokenize", 400, "invalid_value",
             path="/tokenize", body=_json({"model": MODEL, "messages": [{"role": "robot", "content": "x"}] * 5000})),
     Hostile("messages", "empty_list", 400, "invalid_value", body=_chat(messages=[])),
     Hostile("messages", "a_string", 400, "invalid_type", body=_chat(messages="Hello")),
     Hostile("messages", "an_object", 400, "invalid_type", body=_chat(messages={"role": "user", "content": "x"})),
     Hostile("messages", "list_of_strings", 400, "invalid_type", body=_chat(messages=["Hello"])),
     Hostile("messages", "no_role", 400, "missing_required_parameter", body=_chat(messages=[{"content": "x"}])),
     Hostile("messages", "role_admin", 400, "invalid_value", body=_chat(messages=[{"role": "admin", "content": "x"}])),
     Hostile("messages", "role_number", 400, "invalid_value", body=_chat(messages=[{"role": 1, "content": "x"}])),
     Hostile("messages", "no_content", 400, "missing_required_parameter", body=_chat(messages=[{"role": "user"}])),
     Hostile("messages", "content_number", 400, "invalid_type", body=_chat(messages=[{"role": "user", "content": 5}])),
     Hostile("messages", "content_object", 400, "invalid_type",
             body=_chat(messages=[{"role": "user", "content": {"text": "x"}}])),
     Hostile("messages", "unknown_field", 400, "unknown_parameter",
             body=_chat(messages=[{"role": "user", "content": "x", "mood": "angry"}])),
     Hostile("messages", "function_call_field", 400, "unsupported_parameter",
             body=_chat(messages=[{"role": "assistant", "content": "x", "function_call": {"name": "f"}}])),
     Hostile("messages", "tool_without_tool_call_id", 400, "missing_required_parameter",
             body=_chat(messages=[{"role": "tool", "content": "x"}])),
     Hostile("messages", "tool_calls_on_a_user_message", 400, "invalid_value",
             body=_chat(messages=[{"role": "user", "content": "x", "tool_calls": [
                 {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])),
     Hostile("messages", "name_of_300_characters", 400, "invalid_value",
             body=_chat(messages=[{"role": "user", "content": "x", "name": "n" * 300}])))
for _name, _part, _code in (
        ("image_url", {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}, "invalid_value"),
        ("input_audio", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "invalid_value"),
        ("file", {"type": "file", "file": {"file_id": "file-1"}}, "invalid_value"),
        ("no_type", {"text": "x"}, "missing_required_parameter"),
        ("no_text", {"type": "text"}, "missing_required_parameter"),
        ("text_number", {"type": "text", "text": 5}, "invalid_type"),
        ("a_number", 5, "invalid_type"),
        ("null", None, "invalid_type"),
        ("a_list", ["text", "x"], "invalid_type"),
        ("type_number", {"type": 1, "text": "x"}, "invalid_value")):
    _add(Hostile("content_parts", _name, 400, _code, body=_chat(messages=[{"role": "user", "content": [_part]}])))

# --- stop, logit_bias and the other unsupported sampling parameters ------------------------

for _name, (_value, _code) in {"10000_strings": (["x"] * 10_000, "invalid_value"), "5_strings": (["a"] * 5, "invalid_value"),
                               "empty_string": ("", "invalid_value"), "list_with_empty": (["a", ""], "invalid_value"),
                               "number": (5, "invalid_type"), "numbers": ([1, 2], "invalid_type"),
                               "object": ({"a": 1}, "invalid_type"), "nested": ([["a"]], "invalid_type")}.items():
    _add(Hostile("stop", _name, 400, _code, body=_chat(stop=_value)))
_add(Hostile("stop", "completions_10000_strings", 400, "invalid_value", path=COMPLETIONS,
             body=_completion(stop=["x"] * 10_000)))
for _name, _value in {"string_values": {"x": "y"}, "token_bias": {"50256": -100}, "a_list": [1, 2],
                      "a_string": "no", "huge": {str(i): 100 for i in range(5000)}, "number": 5}.items():
    _add(Hostile("logit_bias", _name, 400, "unsupported_parameter", body=_chat(logit_bias=_value)))
for _field, _value in (("presence_penalty", 1.5), ("frequency_penalty", -2), ("logprobs", True), ("top_logprobs", 5),
                       ("functions", [{"name": "f"}]), ("store", True), ("modalities", ["audio"]),
                       ("service_tier", "flex")):
    _add(Hostile("unsupported", _field, 400, "unsupported_parameter", body=_chat(**{_field: _value})))
_add(Hostile("unsupported", "unknown_parameter", 400, "unknown_parameter", body=_chat(temprature=0.5)),
     Hostile("unsupported", "echo_on_completions", 400, "unsupported_parameter", path=COMPLETIONS,
             body=_completion(echo=True)),
     Hostile("unsupported", "best_of_on_completions", 400, "unsupported_parameter", path=COMPLETIONS,
             body=_completion(best_of=3)),
     Hostile("unsupported", "suffix_on_completions", 400, "unsupported_parameter", path=COMPLETIONS,
             body=_completion(suffix="x")),
     Hostile("unsupported", "seed_with_temperature", 400, "unsupported_parameter", body=_chat(seed=1, temperature=1.0)),
     Hostile("unsupported", "stream_options_without_stream", 400, "invalid_value",
             body=_chat(stream_options={"include_usage": True})))

# --- tools with junk ----------------------------------------------------------------------

_FN = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
for _name, (_tools, _code) in {
        "a_string": ("all", "invalid_type"),
        "an_object": ({"type": "function", "function": _FN}, "invalid_type"),
        "list_of_numbers": ([1], "invalid_type"),
        "type_retrieval": ([{"type": "retrieval"}], "invalid_value"),
        "no_function": ([{"type": "function"}], "missing_required_parameter"),
        "function_without_name": ([{"type": "function", "function": {"parameters": {}}}], "missing_required_parameter"),
        "name_with_spaces": ([{"type": "function", "function": {"name": "get weather"}}], "invalid_value"),
        "name_of_100_characters": ([{"type": "function", "function": {"name": "f" * 100}}], "invalid_value"),
        "name_path_traversal": ([{"type": "function", "function": {"name": "../../etc/passwd"}}], "invalid_value"),
        "parameters_a_list": ([{"type": "function", "function": {"name": "f", "parameters": [1, 2]}}], "invalid_type"),
        "parameters_a_string": ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "invalid_type"),
        "129_tools": ([{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)], "invalid_value"),
        "same_name_twice": ([{"type": "function", "function": _FN}] * 2, "invalid_value"),
        "strict_a_string": ([{"type": "function", "function": {**_FN, "strict": "yes"}}], "invalid_type"),
}.items():
    _add(Hostile("tools", _name, 400, _code, body=_chat(tools=_tools)))
for _name, _schema in {"type_banana": {"type": "banana"}, "properties_a_number": {"type": "object", "properties": 5},
                       "dangling_ref": {"$ref": "#/definitions/nothing"},
                       "required_a_string": {"type": "object", "required": "city"}}.items():
    _add(Hostile("tools", f"required_call_with_schema_{_name}", 400, "invalid_value",
                 body=_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": _schema}}],
                            tool_choice="required")))
for _name, (_choice, _code) in {"sometimes": ("sometimes", "invalid_type"), "a_number": (1, "invalid_type"),
                                "unknown_function": ({"type": "function", "function": {"name": "nope"}}, "invalid_value"),
                                "no_tools_auto": ("auto", "invalid_value")}.items():
    _add(Hostile("tools", f"tool_choice_{_name}", 400, _code,
                 body=_chat(**({"tools": [{"type": "function", "function": _FN}]} if _name != "no_tools_auto" else {}),
                            tool_choice=_choice)))

# --- response_format with junk ---------------------------------------------------------------

for _name, (_format, _code) in {
        "a_string": ("json", "invalid_type"),
        "type_xml": ({"type": "xml"}, "invalid_value"),
        "no_type": ({}, "missing_required_parameter"),
        "json_schema_without_schema_object": ({"type": "json_schema"}, "missing_required_parameter"),
        "json_schema_without_name": ({"type": "json_schema", "json_schema": {"schema": {}}}, "missing_required_parameter"),
        "json_schema_a_list": ({"type": "json_schema", "json_schema": [1]}, "invalid_type"),
        "schema_a_string": ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "invalid_type"),
        "schema_type_banana": ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}},
                               "invalid_value"),
        "schema_dangling_ref": ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
                                "invalid_value"),
        "schema_minimum_a_string": ({"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "integer", "minimum": "zero"}}}, "invalid_value"),
}.items():
    _add(Hostile("response_format", _name, 400, _code, body=_chat(response_format=_format)))
_add(Hostile("response_format", "with_tools", 400, "invalid_value",
             body=_chat(response_format={"type": "json_object"}, tools=[{"type": "function", "function": _FN}])))

# --- model ids: in the body and in the path -----------------------------------------------------

for _name, _model in {"etc_passwd": "../../etc/passwd", "encoded_dots": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                      "backslashes": "..\\..\\windows\\win.ini", "absolute_path": "/etc/passwd",
                      "file_url": "file:///etc/passwd", "the_demo_folder": "models/demo",
                      "unicode": "模型🤖", "trailing_space": f"{MODEL} ", "upper_case": MODEL.upper(),
                      "newline": f"{MODEL}\n", "rtl_override": "\u202edemo"}.items():
    _add(Hostile("model_id", _name, 404, "model_not_found", body=_chat(model=_model)))
_add(Hostile("model_id", "nul_byte", 400, "invalid_value", body=_chat(model="llm\u0000server")),
     Hostile("model_id", "10_kb", 400, "invalid_value", body=_chat(model="a" * 10_240)),
     Hostile("model_id", "empty", 400, "invalid_value", body=_chat(model="")),
     Hostile("model_id", "a_number", 400, "invalid_type", body=_chat(model=5)),
     Hostile("model_id", "a_list", 400, "invalid_type", body=_chat(model=[MODEL])),
     Hostile("model_id", "null", 400, "missing_required_parameter", body=_chat(model=None)),
     Hostile("model_id", "completions_etc_passwd", 404, "model_not_found", path=COMPLETIONS,
             body=_completion(model="../../etc/passwd")),
     Hostile("model_id", "responses_etc_passwd", 404, "model_not_found", path=RESPONSES,
             body=_response(model="../../etc/passwd")),
     Hostile("model_id", "tokenize_etc_passwd", 404, "model_not_found", path="/tokenize",
             body=_json({"model": "../../etc/passwd", "prompt": "x"})))
for _name, _path in {"dot_segments": "/v1/models/../../etc/passwd", "encoded_slashes": "/v1/models/..%2f..%2fetc%2fpasswd",
                     "encoded_dots": "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                     "backslashes": "/v1/models/..\\..\\windows", "encoded_backslashes": "/v1/models/..%5c..%5cwindows",
                     "nul_byte": "/v1/models/llm%00server", "10_kb": "/v1/models/" + "a" * 10_240,
                     "unicode": "/v1/models/%E6%A8%A1%E5%9E%8B", "invalid_utf8": "/v1/models/%ff%fe",
                     "double_encoded": "/v1/models/%252e%252e%252f", "the_demo_folder": "/v1/models/models/demo",
                     "lone_surrogate_encoded": "/v1/models/%ed%a0%80"}.items():
    _add(Hostile("model_id_in_path", _name, 404, "model_not_found", method="GET", path=_path, content_type=None))
_add(Hostile("model_id_in_path", "load_etc_passwd_without_admin", 403, "admin_key_required",
             path="/v1/models/../../etc/passwd/load", content_type=None),
     Hostile("model_id_in_path", "unload_without_admin", 403, "admin_key_required",
             path=f"/v1/models/{MODEL}/unload", content_type=None),
     Hostile("model_id_in_path", "loaded_without_admin", 403, "admin_key_required", method="GET",
             path="/v1/models/loaded", content_type=None))

# --- Authorization headers ------------------------------------------------------------------

_AUTH = {
    "missing": (), "bearer_without_key": (b"Bearer",), "bearer_and_space": (b"Bearer ",), "empty": (b"",),
    "basic": (b"Basic dXNlcjpwYXNzd29yZA==",), "token_scheme": (b"Token sk-abc",), "key_without_scheme": (b"sk-abc",),
    "unknown_key": (b"Bearer sk-" + b"a" * 43,), "two_bearer_tokens": (b"Bearer sk-abc Bearer sk-def",),
    "two_headers": (b"Bearer sk-abc", b"Bearer sk-def"), "non_ascii_utf8": ("Bearer sk-ключ".encode(),),
    "latin1_bytes": (b"Bearer sk-\xe9\xff",), "300_characters": (b"Bearer sk-" + b"a" * 300,),
    "sql_injection": (b"Bearer sk-' OR '1'='1",), "nul_escape": (b"Bearer sk-%00",),
}
for _name, _headers in _AUTH.items():
    _add(Hostile("authorization", _name, 401, "invalid_api_key", auth=False, authorization=_headers, body=_chat()))
for _path, _method in ((COMPLETIONS, "POST"), (RESPONSES, "POST"), ("/tokenize", "POST"), ("/v1/models", "GET"),
                       (f"/v1/models/{MODEL}", "GET"), ("/metrics", "GET")):
    _add(Hostile("authorization", f"basic{_path.replace('/', '_')}", 401, "invalid_api_key", method=_method,
                 path=_path, auth=False, authorization=(b"Basic YTpi",), body=_completion() if _method == "POST" else b""))
_add(Hostile("authorization", "100_kb", 431, "request_header_too_large", auth=False,
             authorization=(b"Bearer " + b"a" * 100_000,), body=_chat()),
     Hostile("authorization", "key_in_the_query_string", 401, "invalid_api_key", auth=False,
             path=f"{CHAT}?api_key=sk-abc", body=_chat()),
     Hostile("authorization", "metrics_with_a_key_without_admin", 403, "admin_key_required", method="GET",
             path="/metrics", content_type=None))

# --- Content-Type, Content-Encoding and Content-Length ----------------------------------------

for _name, _type in {"missing": None, "empty": b"", "text_plain": b"text/plain", "text_json": b"text/json",
                     "multipart": b"multipart/form-data; boundary=xyz", "form": b"application/x-www-form-urlencoded",
                     "xml": b"application/xml", "json_patch": b"application/json-patch+json",
                     "jsonx": b"application/jsonx", "octet_stream": b"application/octet-stream",
                     "html": b"text/html; charset=utf-8", "no_subtype": b"application"}.items():
    _add(Hostile("content_type", _name, 415, "unsupported_media_type", content_type=_type, body=_chat()))
_add(Hostile("content_type", "multipart_with_a_real_form", 415, "unsupported_media_type",
             content_type=b"multipart/form-data; boundary=xyz",
             body=b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nllmserver-demo\r\n--xyz--\r\n'),
     Hostile("content_type", "form_to_completions", 415, "unsupported_media_type", path=COMPLETIONS,
             content_type=b"application/x-www-form-urlencoded", body=b"model=llmserver-demo&prompt=hi"))
for _name, (_coding, _body) in {"gzip_of_a_valid_body": (b"gzip", gzip.compress(_chat())),
                                "deflate_of_a_valid_body": (b"deflate", zlib.compress(_chat())),
                                "gzip_junk": (b"gzip", b"\x1f\x8b\x08junk"), "br": (b"br", b"\x0b\x02\x80junk"),
                                "gzip_header_on_plain_json": (b"gzip", _chat()),
                                "two_codings": (b"gzip, identity", gzip.compress(_chat()))}.items():
    _add(Hostile("content_encoding", _name, 415, "unsupported_media_type", headers=((b"Content-Encoding", _coding),),
                 body=_body))
_add(Hostile("content_length", "shorter_than_the_body", 400, "invalid_json", body=_chat(), content_length=20),
     Hostile("content_length", "zero_with_a_body", 400, "missing_required_parameter", body=_chat(), content_length=0),
     Hostile("content_length", "not_a_number", 400, "bad_request", body=_chat(),
             headers=((b"Content-Length", b"abc"),)),
     Hostile("content_length", "negative", 400, "bad_request", body=b"{}", headers=((b"Content-Length", b"-5"),)),
     Hostile("content_length", "two_that_disagree", 400, "bad_request", body=b"{}",
             headers=((b"Content-Length", b"2"), (b"Content-Length", b"3"))),
     Hostile("content_length", "bad_chunk_size", 400, "bad_request", body=b"zz\r\nabc\r\n0\r\n\r\n",
             headers=((b"Transfer-Encoding", b"chunked"),)))

# --- methods, paths, query strings ------------------------------------------------------------

for _path in (CHAT, COMPLETIONS, RESPONSES, "/tokenize", "/detokenize"):
    for _method in ("GET", "PUT", "DELETE", "PATCH"):
        _add(Hostile("methods", f"{_method}{_path.replace('/', '_')}", 405, "method_not_allowed", method=_method,
                     path=_path, body=_chat() if _method != "GET" else b""))
for _method, _path in (("POST", "/v1/models"), ("DELETE", f"/v1/models/{MODEL}"), ("PUT", f"/v1/models/{MODEL}"),
                       ("POST", "/health"), ("DELETE", "/health"), ("FOO", CHAT), ("TRACE", CHAT),
                       ("GET", f"/v1/models/{MODEL}/load")):
    _add(Hostile("methods", f"{_method}{_path.replace('/', '_')}", 405, "method_not_allowed", method=_method,
                 path=_path, body=b"{}" if _method not in ("GET", "TRACE") else b""))
for _name, _path in {"unknown": "/v1/nothing", "trailing_slash": f"{CHAT}/", "double_slash": "/v1//models",
                     "models_slash": "/v1/models/", "v2": "/v2/chat/completions", "dot_segment": f"{COMPLETIONS}/../models",
                     "chat_prefix": "/v1/chat", "v1x": "/v1x",
                     "case": "/V1/CHAT/COMPLETIONS", "nul": "/v1/chat/completions%00", "engines": "/v1/engines",
                     "files": "/v1/files", "embeddings": "/v1/embeddings"}.items():
    _add(Hostile("paths", _name, 404, "not_found", path=_path, body=_chat()))
_add(Hostile("query_string", "invalid_body_with_a_query", 400, "invalid_json", path=f"{CHAT}?model={MODEL}&stream=true",
             body=b"{"),
     Hostile("query_string", "model_only_in_the_query", 400, "missing_required_parameter",
             path=f"{CHAT}?model={MODEL}", body=b"{}"),
     Hostile("query_string", "junk_query_to_an_unknown_model", 404, "model_not_found",
             method="GET", path="/v1/models/nope?x=%ff&y=<script>alert(1)</script>", content_type=None))

# --- the other endpoints' own junk ---------------------------------------------------------

for _name, (_body, _code) in {
        "input_a_number": (_response(input=5), "invalid_type"), "input_empty_list": (_response(input=[]), "invalid_type"),
        "input_empty_string": (_response(input=""), "invalid_value"),
        "input_item_a_string": (_response(input=["hi"]), "invalid_type"),
        "input_item_image": (_response(input=[{"type": "input_image", "image_url": "x"}]), "unsupported_parameter"),
        "input_bad_role": (_response(input=[{"role": "robot", "content": "x"}]), "invalid_value"),
        "input_image_part": (_response(input=[{"role": "user", "content": [{"type": "input_image"}]}]),
                             "unsupported_parameter"),
        "store_true": (_response(store=True), "unsupported_parameter"),
        "previous_response_id": (_response(previous_response_id="resp_1"), "unsupported_parameter"),
        "background": (_response(background=True), "unsupported_parameter"),
        "metadata_number_values": (_response(metadata={"a": 1}), "invalid_type"),
        "tool_choice_junk": (_response(tool_choice={"type": "file_search"}), "invalid_type"),
        "function_call_without_call_id": (_response(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]),
                                          "missing_required_parameter"),
}.items():
    _add(Hostile("responses", _name, 400, _code, path=RESPONSES, body=_body))
for _name, (_body, _code) in {
        "prompt_empty_list": (_completion(prompt=[]), "invalid_value"),
        "prompt_list_of_empty_lists": (_completion(prompt=[[]]), "invalid_type"),
        "prompt_mixed": (_completion(prompt=["a", 1]), "invalid_type"),
        "prompt_object": (_completion(prompt={"text": "a"}), "invalid_type"),
        "prompt_missing": (_json({"model": MODEL}), "missing_required_parameter"),
        "prompt_of_2000_token_ids": (_completion(prompt=[1] * 2000), "context_length_exceeded"),
}.items():
    _add(Hostile("completions", _name, 400, _code, path=COMPLETIONS, body=_body))
for _name, (_path, _body, _code) in {
        "tokenize_prompt_and_messages": ("/tokenize", _json({"model": MODEL, "prompt": "x", "messages": [
            {"role": "user", "content": "x"}]}), "invalid_value"),
        "tokenize_neither": ("/tokenize", _json({"model": MODEL}), "invalid_value"),
        "tokenize_prompt_a_list": ("/tokenize", _json({"model": MODEL, "prompt": ["x"]}), "invalid_type"),
        "detokenize_tokens_a_string": ("/detokenize", _json({"model": MODEL, "tokens": "1 2 3"}), "invalid_type"),
        "detokenize_tokens_floats": ("/detokenize", _json({"model": MODEL, "tokens": [1.5]}), "invalid_type"),
        "detokenize_tokens_missing": ("/detokenize", _json({"model": MODEL}), "missing_required_parameter"),
}.items():
    _add(Hostile("tokenizer", _name, 400, _code, path=_path, body=_body))

CATEGORIES = sorted({case.category for case in CORPUS})
