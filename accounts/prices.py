"""Model prices and the cost of usage.

A usage record's cost is computed when the accounting thread writes it
(accounts.settlement), from the prices in the database at that moment: every process
that shares the database charges the same, a price changed in the admin applies from the
next record written, and records written before keep their cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from accounts.models import COST_PLACES, ModelPrice

MILLION = Decimal(1_000_000)
# A cost's decimal places; the counters sum costs as whole units of that size.
_QUANTUM = Decimal(1).scaleb(-COST_PLACES)

Price = tuple[Decimal, Decimal]  # (prompt, completion) per million tokens


def prices_of(models: Iterable[str]) -> dict[str, Price]:
    """The price of each of ``models`` that has one."""
    names = {name for name in models if name}
    if not names:
        return {}
    rows = ModelPrice.objects.filter(model__in=names).values_list("model", "prompt_per_million",
                                                                   "completion_per_million")
    return {model: (prompt, completion) for model, prompt, completion in rows}


def cost(price: Price | None, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """What the tokens cost at ``price``; None without a price."""
    if price is None:
        return None
    prompt, completion = price
    return ((prompt_tokens * prompt + completion_tokens * completion) / MILLION).quantize(_QUANTUM)


def record_cost(prices: dict[str, Price], record) -> Decimal | None:
    """A usage row's (accounts.records.UsageRow) cost at ``prices``."""
    return cost(prices.get(record.model), record.prompt_tokens, record.completion_tokens)


def units(amount: Decimal | None) -> int:
    """``amount`` (a cost, or a budget) in whole units of 1e-10: what the counters sum."""
    return 0 if amount is None else int(amount.scaleb(COST_PLACES).to_integral_value())


def follow_catalogue(prices: dict[str, Price]) -> None:
    """Keep the prices MODELS_CONFIG gives (model id → price) in the database: a model
    without a row gets one, a row that came from MODELS_CONFIG takes the new price, and a
    row edited in the admin stays as edited."""
    for model, (prompt, completion) in prices.items():
        row, created = ModelPrice.objects.get_or_create(
            model=model, defaults={"prompt_per_million": prompt, "completion_per_million": completion,
                                   "source": ModelPrice.Source.CONFIG})
        if not created and row.source == ModelPrice.Source.CONFIG and (
                row.prompt_per_million, row.completion_per_million) != (prompt, completion):
            row.prompt_per_million, row.completion_per_million = prompt, completion
            row.save(update_fields=["prompt_per_million", "completion_per_million", "updated_at"])
