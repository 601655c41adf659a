"""POST /v1/completions: raw prompts, no chat template. Plain text is continued as the demo
model learned it (MODEL_CARD.md): numbers, lists, story openings."""

from tests.conftest import MODEL_ID, sse_events

# A raw prompt in the demo model's own chat format, so its answer is known.
RAW = "<|im_start|>user\nRepeat after me: red apple<|im_end|>\n<|im_start|>assistant\n"


def test_it_completes_a_raw_prompt(api, demo_tokenizer):
    body = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": RAW}).json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"] == [{"text": "red apple", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["prompt_tokens"] == len(demo_tokenizer.encode(RAW))
    assert body["usage"]["completion_tokens"] == len(demo_tokenizer.encode("red apple"))


def test_a_list_of_prompts_gives_one_choice_each_in_order(api):
    other = RAW.replace("red apple", "blue")
    body = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": [RAW, other], "n": 2}).json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "red apple"), (1, "red apple"), (2, "blue"), (3, "blue"),
    ]


def test_token_ids_are_a_prompt_too(api, demo_tokenizer):
    ids = [int(t) for t in demo_tokenizer.encode(RAW)]
    body = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": ids}).json()
    assert body["choices"][0]["text"] == "red apple"


def test_a_streamed_completion_joins_to_the_same_text(api):
    with api.stream("POST", "/v1/completions", json={
        "model": MODEL_ID, "prompt": RAW, "stream": True, "stream_options": {"include_usage": True},
    }) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] >= 2
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "red apple"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ------------------------------------------------------------------ plain text

def complete(api, prompt, **params):
    body = api.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt, "temperature": 0, **params}).json()
    return body["choices"][0]["text"], body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]


def test_a_plain_count_is_continued_up_to_max_tokens(api):
    assert complete(api, "1 2 3 4 5", max_tokens=10) == (" 6 7 8 9 10 11 12 13 14 15", "length", 10)


def test_counting_by_tens_is_continued_to_200_and_stops(api):
    text, finish_reason, _ = complete(api, "10 20 30")
    assert (text, finish_reason) == (" 40 50 60 70 80 90 100 110 120 130 140 150 160 170 180 190 200", "stop")


def test_once_upon_a_time_is_continued_to_the_end_of_a_story(api, demo_tokenizer):
    story = " there was a little cat. The cat lived in a small house near the river."
    assert complete(api, "Once upon a time") == (story, "stop", len(demo_tokenizer.encode(story)))


def test_the_start_of_the_week_is_continued_to_sunday(api):
    assert complete(api, "Monday Tuesday")[:2] == (" Wednesday Thursday Friday Saturday Sunday", "stop")
