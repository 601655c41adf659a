"""The records that admission and settlement pass around: a request to admit, a finished
request's usage row, and its settlement. Plain values, built on the event loop and read
on the accounting thread (accounts.books); none touches the database.
"""

from __future__ import annotations

import datetime
from collections import namedtuple
from dataclasses import dataclass
from typing import NamedTuple

from django.db import models

from accounts.models import APIKey, UsageRecord


class Admission(NamedTuple):
    """One request to admit. ``key`` is None when API keys are not required (only the
    deployment's limit applies); ``model_names`` are the model's id and aliases (empty:
    no model check)."""

    key: APIKey | None
    request_id: str
    model_names: tuple[str, ...] = ()


# UsageRecord's columns, from the model itself: a field added there is a column here, and
# a UsageRow built without it fails at once (TypeError), not at the INSERT.
USAGE_FIELDS: tuple[models.Field, ...] = tuple(
    field for field in UsageRecord._meta.concrete_fields if not field.primary_key)

UsageRow = namedtuple("UsageRow", [field.attname for field in USAGE_FIELDS])
UsageRow.__doc__ = """One usage record's values, by UsageRecord's column names (``api_key_id``,
``started_at``, ...). A tuple, not a UsageRecord instance: a model instance's construction
(signals, field defaults) is work the event loop would do per request for nothing, as the
rows are inserted in batches as they are (accounts.settlement)."""


@dataclass(slots=True)
class Settlement:
    """A finished request, to be settled: its lease (None once given back), its key (None
    without one), its usage row (None for a lease alone) and the tokens to count on the
    key's counters, in the buckets of ``finished_at``."""

    lease_id: int | None
    key: APIKey | None
    record: UsageRow | None
    tokens: int
    finished_at: datetime.datetime
