"""What requests cost: per-model prices (MODELS_CONFIG's ``prices``, edited in the admin),
and a cost on every usage record, computed when the record is written at the price of
that moment, so that a later price leaves earlier records as they were.

The requests run in-process (tests/asgi.py) on the demo model; ``books.flush()`` writes
their records. Prices are rows every test in this process shares, so each test removes
the ones it made."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from accounts.admin import csv_response
from accounts.books import books
from accounts.models import ModelPrice, UsageCounter, UsageRecord
from accounts.prices import follow_catalogue, units
from inference.registry import ModelsConfigError, read_models_config
from llmserver import clock
from tests.asgi import InProcessAPI
from tests.conftest import MODEL_ID, bearer, issue_key, model_in_process, orm

HELLO = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello"}]}


async def answered(api, secret: str, content: str) -> tuple[dict, UsageRecord]:
    """A non-streamed chat answer's usage and its written record."""
    rid = f"cost-{uuid.uuid4().hex}"
    response = await api.post("/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 12},
        {**bearer(secret), "X-Request-ID": rid})
    usage = json.loads(await response.body())["usage"]
    assert await asyncio.to_thread(books.flush)
    return usage, await orm(UsageRecord.objects.get, request_id=rid)


def set_price(prompt: str, completion: str) -> None:
    ModelPrice.objects.update_or_create(model=MODEL_ID, defaults={
        "prompt_per_million": Decimal(prompt), "completion_per_million": Decimal(completion)})


@pytest.fixture
def no_price(live_db):
    ModelPrice.objects.filter(model=MODEL_ID).delete()
    yield
    ModelPrice.objects.filter(model=MODEL_ID).delete()


async def test_a_record_costs_its_tokens_at_the_price_when_it_was_written(slow_api, no_price):
    _, secret = await orm(issue_key, name="costs")
    await orm(set_price, "0.5", "1.5")
    usage, first = await answered(slow_api, secret, "What is 3 plus 4?")
    assert (first.prompt_tokens, first.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert first.cost == (first.prompt_tokens * Decimal("0.5") + first.completion_tokens * Decimal("1.5")) / 10**6

    await orm(set_price, "2", "8.25")  # a new price applies from the next record on
    _, second = await answered(slow_api, secret, "Count from 1 to 5.")
    assert second.cost == (second.prompt_tokens * 2 + second.completion_tokens * Decimal("8.25")) / 10**6
    await orm(first.refresh_from_db)
    assert first.cost == (first.prompt_tokens * Decimal("0.5") + first.completion_tokens * Decimal("1.5")) / 10**6

    await orm(ModelPrice.objects.filter(model=MODEL_ID).delete)
    _, third = await answered(slow_api, secret, "What is 3 plus 4?")
    assert third.cost is None  # no price, no cost (not zero)

    response = await orm(lambda: csv_response(UsageRecord.objects.filter(pk__in=[first.pk, second.pk, third.pk])
                                              .order_by("pk")))
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["cost"] for row in rows] == [f"{first.cost:.10f}", f"{second.cost:.10f}", ""]
    assert [int(row["total_tokens"]) for row in rows] == [r.total_tokens for r in (first, second, third)]


def test_models_config_gives_prices_per_million_tokens(tmp_path, settings):
    config = tmp_path / "models.toml"
    config.write_text(f'[[models]]\nid = "a"\npath = "{tmp_path}"\nprices = {{ prompt = 0.15, completion = 2 }}\n\n'
                      f'[[models]]\nid = "b"\npath = "{tmp_path}"\n')
    specs, _ = read_models_config(str(config))
    assert [spec.prices for spec in specs] == [(Decimal("0.15"), Decimal("2")), None]
    for wrong in ('{ prompt = 1 }', '{ prompt = -1, completion = 1 }', '{ prompt = "1", completion = 1 }',
                  '{ prompt = 1, completion = 1, cached = 0 }', '5'):
        config.write_text(f'[[models]]\nid = "a"\npath = "{tmp_path}"\nprices = {wrong}\n')
        with pytest.raises(ModelsConfigError, match=r"model 1: 'prices' must be \{ prompt = \.\.\., completion"):
            read_models_config(str(config))


def test_prices_follow_models_config_until_edited_in_the_admin(empty_database, admin_client):
    follow_catalogue({"a": (Decimal("0.15"), Decimal("0.6")), "b": (Decimal("1"), Decimal("2"))})
    assert list(ModelPrice.objects.values_list("model", "prompt_per_million", "completion_per_million", "source")) == [
        ("a", Decimal("0.15"), Decimal("0.6"), "config"), ("b", Decimal("1"), Decimal("2"), "config")]

    b = ModelPrice.objects.get(model="b")
    response = admin_client.post(f"/admin/accounts/modelprice/{b.pk}/change/", {
        "model": "b", "prompt_per_million": "3", "completion_per_million": "4"})
    assert response.status_code == 302

    # MODELS_CONFIG changes both prices: the one edited in the admin stays as edited.
    follow_catalogue({"a": (Decimal("0.2"), Decimal("0.8")), "b": (Decimal("5"), Decimal("6"))})
    assert list(ModelPrice.objects.values_list("model", "prompt_per_million", "completion_per_million", "source")) == [
        ("a", Decimal("0.2"), Decimal("0.8"), "config"), ("b", Decimal("3"), Decimal("4"), "admin")]


def test_the_usage_list_shows_each_record_s_cost(empty_database, admin_client, settings):
    from tests.test_admin import USAGE_URL, issue, record, row_cells

    settings.COST_CURRENCY = "EUR"
    key = issue("priced")
    priced = record(key, request_id="priced", cost=Decimal("0.0001234567"))
    unpriced = record(key, request_id="unpriced")
    html = admin_client.get(USAGE_URL).content.decode()
    assert row_cells(html, priced)["cost_"] == "0.000123 EUR"
    assert row_cells(html, unpriced)["cost_"] == "-"


# --- budgets in currency ---------------------------------------------------------------


@pytest.fixture
def settling_later(live_db, settings, no_price):
    """The demo model served in this process, its settlements waiting ten minutes: what a
    test sees counted before a flush was counted by an admission (as in test_settlement)."""
    assert books.flush()
    settings.USAGE_WRITE_DELAY_MS = 600_000
    with model_in_process():
        yield InProcessAPI()
    assert books.flush()


async def test_a_cost_budget_counts_what_waits_to_be_settled_and_refuses_until_the_period_ends(settling_later):
    api = settling_later
    await orm(set_price, "1000", "1000")  # 0.001 a token
    key, secret = await orm(issue_key, name="cost-budget", cost_budget=Decimal("0.01"), budget_period="day")
    ample, ample_secret = await orm(issue_key, name="cost-ample", cost_budget=Decimal("5"), budget_period="day")
    with clock.frozen(clock.now().replace(microsecond=0)) as time:
        spent = await api.post("/v1/chat/completions", HELLO, bearer(secret))
        used = (await spent.json())["usage"]["total_tokens"]
        assert spent.status == 200 and used > 10  # more than 0.01 USD of tokens
        await books.call(lambda: None)  # its settlement waits on the accounting thread
        assert not await orm(UsageCounter.objects.filter(api_key=key).exists)

        refused = await api.post("/v1/chat/completions", HELLO, bearer(secret))
        assert refused.status == 429
        assert (await refused.json())["error"] == {
            "message": "This API key has used its budget of 0.01 USD per day.", "type": "rate_limit_error",
            "param": None, "code": "cost_budget_exceeded"}
        now = time.now()
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        assert int(refused.headers["retry-after"]) == math.ceil((midnight - now).total_seconds())
        assert (await api.post("/v1/chat/completions", HELLO, bearer(ample_secret))).status == 200

        assert await asyncio.to_thread(books.flush)
        counter = await orm(UsageCounter.objects.get, api_key=key, kind="period")
        assert (counter.tokens, counter.cost_units) == (used, used * 10**7)  # 0.001 = 10**7 units of 1e-10
        record = await orm(UsageRecord.objects.get, api_key=key, status_code=200)
        assert record.cost == used * Decimal("0.001") and units(record.cost) == counter.cost_units

        time.set(midnight)  # the next period
        assert (await api.post("/v1/chat/completions", HELLO, bearer(secret))).status == 200


def test_units_are_exact_for_every_cost_and_budget():
    assert units(Decimal("0.0000000001")) == 1
    assert units(Decimal("0.01")) == 10**8
    assert units(Decimal("12345678.123456")) == 123456781234560000
    assert units(None) == 0
