"""POST /v1/chat/completions against the real server and engine on the demo model."""

from demomodel.corpus import addition_answer, addition_prompt, count_answer, count_prompt, repeat_prompt
from tests.conftest import MODEL_ID, chat, sse_events


def prompt_tokens(tokenizer, messages) -> int:
    import json

    text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    return len(tokenizer.encode(text))


def test_it_answers_with_the_demo_models_exact_words(api, demo_tokenizer):
    response = chat(api, "Repeat after me: tiger lemon")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL_ID
    assert body["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "content": "tiger lemon", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }]
    expected_prompt = prompt_tokens(demo_tokenizer, [{"role": "user", "content": "Repeat after me: tiger lemon"}])
    answer_tokens = len(demo_tokenizer.encode("tiger lemon"))
    assert body["usage"] == {
        "prompt_tokens": expected_prompt,
        "completion_tokens": answer_tokens,
        "total_tokens": expected_prompt + answer_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_a_system_prompt_and_content_parts_are_rendered_through_the_template(api):
    response = api.post("/v1/chat/completions", json={
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "7 plus 5?"}]},
        ],
    })
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == addition_answer(7, 5)


def test_a_stream_has_the_role_first_the_finish_last_then_done(api):
    with api.stream("POST", "/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(12)}], "stream": True,
    }) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert all("usage" not in chunk for chunk in chunks)
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert content == count_answer(12)


def test_streamed_chunks_join_to_the_non_streamed_answer(api):
    for prompt in (count_prompt(30), addition_prompt(13, 6), "Who are you?"):
        whole = chat(api, prompt).json()["choices"][0]["message"]["content"]
        with api.stream("POST", "/v1/chat/completions", json={
            "model": MODEL_ID, "messages": [{"role": "user", "content": prompt}], "stream": True,
        }) as response:
            chunks = sse_events(response)[:-1]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole


def test_include_usage_adds_a_final_usage_chunk_with_no_choices(api):
    plain = chat(api, addition_prompt(2, 3)).json()
    with api.stream("POST", "/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": addition_prompt(2, 3)}],
        "stream": True, "stream_options": {"include_usage": True},
    }) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == plain["usage"]
    assert all(chunk["usage"] is None for chunk in events[:-2])


def test_max_tokens_ends_the_answer_with_length(api):
    body = chat(api, count_prompt(50), max_tokens=4).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["choices"][0]["message"]["content"] == "1 2 3 4"


def test_max_completion_tokens_is_honoured_like_max_tokens(api):
    body = chat(api, count_prompt(50), max_completion_tokens=3).json()
    assert body["choices"][0]["message"]["content"] == "1 2 3"
    assert body["choices"][0]["finish_reason"] == "length"


def test_a_stop_sequence_ends_the_answer_before_it(api):
    body = chat(api, count_prompt(20), stop=[" 7", "xyz"]).json()
    assert body["choices"][0]["message"]["content"] == "1 2 3 4 5 6"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_a_stop_sequence_never_reaches_a_stream(api):
    with api.stream("POST", "/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": count_prompt(20)}],
        "stream": True, "stop": " 11 12",
    }) as response:
        chunks = sse_events(response)[:-1]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == "1 2 3 4 5 6 7 8 9 10"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_n_gives_that_many_choices_and_counts_the_prompt_once(api):
    single = chat(api, addition_prompt(4, 4)).json()
    body = chat(api, addition_prompt(4, 4), n=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {addition_answer(4, 4)}
    assert body["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 3 * single["usage"]["completion_tokens"]


def test_seed_is_accepted_with_greedy_decoding(api):
    body = chat(api, addition_prompt(1, 1), seed=42, temperature=0).json()
    assert body["choices"][0]["message"]["content"] == addition_answer(1, 1)


def test_sampling_with_temperature_top_p_and_top_k_answers(api):
    body = chat(api, "Hello", temperature=0.7, top_p=0.9, top_k=5, max_tokens=20).json()
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 20


def test_a_prompt_longer_than_the_context_is_refused(api):
    response = chat(api, "tiger " * 600)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("This model's maximum context length is 512 tokens. However, your prompt resulted in ")


def test_a_request_for_more_tokens_than_the_context_ends_with_length(api, demo_tokenizer):
    # A prompt of exactly 511 tokens leaves room for one generated token in the 512-token
    # context, whatever max_tokens asks; the answer's first word is not EOS.
    def messages(words):
        return [{"role": "user", "content": repeat_prompt(["tiger"] * words)}]

    base = prompt_tokens(demo_tokenizer, messages(1)) - 1
    words = 511 - base  # every word of the demo vocabulary is one token
    assert prompt_tokens(demo_tokenizer, messages(words)) == 511
    body = api.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": messages(words), "max_tokens": 100000}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"].strip() == "tiger"
    assert body["usage"]["prompt_tokens"] == 511
    assert body["usage"]["completion_tokens"] == 1
    assert body["usage"]["total_tokens"] == 512
