"""Reasoning on the zoo's tiny random-weight models (modelzoo, ``make model-zoo``): the real
Qwen3 and DeepSeek-R1 tokenizers and chat templates, with weights that know nothing."""

from __future__ import annotations

import pytest

from inference.reasoning import split_whole, splitter_for
from tests.test_reasoning import expected_reasoning_tokens, forced_generation, post, token_texts
from tests.zoo import serving, zoo_model

FAMILIES = ("qwen3", "deepseek_r1")


@pytest.fixture(scope="module")
def zoo_models(live_db):
    from inference.registry import ModelSpec

    specs = [ModelSpec(family, str(zoo_model(family)), max_batch_size=4, preload=True,
                       engine_options={"search": {"max_length": 1024}}) for family in FAMILIES]
    with serving(specs, default=FAMILIES[0]) as workers:
        yield workers


def test_auto_reads_each_familys_parser_off_its_template(zoo_models):
    assert {family: worker.reasoning_parser for family, worker in zoo_models.items()} == {
        "qwen3": "qwen3", "deepseek_r1": "deepseek_r1"}


async def test_qwen3s_think_tokens_are_text_and_its_end_token_ends_the_count(zoo_models):
    worker = zoo_models["qwen3"]
    end_token = int(worker.tokenizer.encode("</think>")[0])
    assert list(worker.tokenizer.encode("</think>")) == [end_token] == [151668]  # one token of its vocabulary
    generation, updates = await forced_generation(worker, "<think>\nTwo and two.\n</think>\n\nFour.", in_reasoning=False)
    assert "".join(update.reasoning for update in updates) == "Two and two."
    assert "".join(update.text for update in updates) == "Four."
    generated = generation.turns[0]._generated
    assert end_token in generated
    assert generation.reasoning_tokens == generated.index(end_token) + 1
    assert generation.reasoning_tokens == expected_reasoning_tokens(token_texts(worker, generated), False)


@pytest.mark.parametrize("family", FAMILIES)
async def test_a_chat_answer_is_the_split_of_what_the_model_wrote(zoo_models, api_key, family):
    """Whatever the random weights write, the chat answer is exactly its split, by the
    prompt the real template renders (the DeepSeek-R1 template as fetched closes the block
    unless enable_thinking is set: all answer)."""
    messages = [{"role": "user", "content": "What is two and two?"}]
    counted = await (await post(api_key, "/tokenize", {"model": family, "messages": messages})).json()
    prompt_text = zoo_models[family].tokenizer.decode(counted["tokens"])
    body = {"model": family, "max_tokens": 12}
    raw = await (await post(api_key, "/v1/completions", {**body, "prompt": counted["tokens"]})).json()
    written = raw["choices"][0]["text"]
    answer = await (await post(api_key, "/v1/chat/completions", {**body, "messages": messages})).json()
    message, usage = answer["choices"][0]["message"], answer["usage"]
    splitter = splitter_for(zoo_models[family].reasoning_parser, prompt_text)
    if splitter is None:
        assert family == "deepseek_r1" and prompt_text.rstrip().endswith("</think>")
        reasoning, content = "", written
    else:
        reasoning, content = split_whole(written, in_reasoning=splitter.in_reasoning)
    assert (message["reasoning_content"], message["content"]) == (reasoning or None, content)
    assert usage["completion_tokens"] == raw["usage"]["completion_tokens"]
    assert 0 <= usage["completion_tokens_details"]["reasoning_tokens"] <= usage["completion_tokens"]
