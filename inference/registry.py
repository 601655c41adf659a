"""The models this process serves: a catalogue of model folders, each loaded when a
request first asks for it, the least recently used idle one unloaded when too many are.

The catalogue comes from one place at start:

- ``MODELS_CONFIG``, a TOML file listing models (id, path, aliases, batch size, engine
  options) and naming the default; when it is set it is the whole catalogue and
  ``MODEL_PATH``/``MODEL_ID`` are not read;
- otherwise the single model ``MODEL_PATH`` served as ``MODEL_ID``.

Loading, unloading and counting requests in flight happen on the event loop (one thread),
so no lock guards the slots; a load or an unload, which block for seconds, runs in a
worker thread while the loop goes on. A model is never unloaded while it has requests in
flight: eviction picks only idle models, and an explicit unload of a busy one is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from inference.engine import EngineWorker, ModelLoadError, folder_context
from inference.model_options import ModelOptions
from inference.tool_parsers import PARSERS
from llmserver import clock
from llmserver.errors import ModelBusy, ModelCapacity, ModelUnavailable, model_not_found

log = logging.getLogger("llmserver.registry")


class ModelsConfigError(Exception):
    """MODELS_CONFIG cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry."""

    id: str
    path: str
    aliases: tuple[str, ...] = ()
    max_batch_size: int = 16
    # Merged into the model's genai_config.json when it loads (e.g. {"model": {...}}).
    engine_options: dict = field(default_factory=dict, hash=False, compare=False)
    preload: bool = False  # loaded when the server starts, not on first request
    model_options: ModelOptions = field(default_factory=ModelOptions, hash=False, compare=False)
    # (prompt, completion) per million tokens, in COST_CURRENCY (accounts.prices); None: none given.
    prices: tuple[Decimal, Decimal] | None = field(default=None, hash=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


class ModelSlot:
    """A catalogue entry's place in memory: its worker when loaded, and its use."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.worker: EngineWorker | None = None
        self.state = "unloaded"  # unloaded → loading → loaded → unloading → unloaded; or failed
        self.error: str | None = None
        self.in_flight = 0
        self.last_used = 0.0  # clock.seconds() of the last request's start or end
        self.loaded_at: float | None = None  # time.time()
        self.load_seconds: float | None = None
        self.memory_bytes: int | None = None  # resident memory the load added (approximate)
        self.loads = 0  # times loaded since the server started
        self._transition: asyncio.Task | None = None  # the load or unload under way

    @property
    def loaded(self) -> bool:
        """Loaded with a live engine (an engine that died counts as not loaded)."""
        return self.state == "loaded" and self.worker is not None and self.worker.running

    @property
    def engine_died(self) -> bool:
        """Loaded, but its engine thread has stopped (the next request loads it again)."""
        return self.state == "loaded" and not self.loaded

    def status(self) -> dict:
        worker = self.worker
        state = "failed" if self.engine_died else self.state
        return {
            "id": self.spec.id,
            "aliases": list(self.spec.aliases),
            "path": self.spec.path,
            "state": state,
            "error": self.error if state == "failed" else None,
            "loaded_at": int(self.loaded_at) if self.loaded_at and state == "loaded" else None,
            "load_seconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
            "in_flight": self.in_flight,
            "loads": self.loads,
            "idle_seconds": round(clock.seconds() - self.last_used, 1) if self.last_used else None,
            "memory_bytes": self.memory_bytes if state == "loaded" else None,
            "max_batch_size": self.spec.max_batch_size,
            "batch_limit": worker.batch_limit if worker and state == "loaded" else None,
        }


class ModelUse:
    """A request's hold on a loaded model: the model is not unloaded until it is released
    (exactly once, from any path)."""

    def __init__(self, registry: ModelRegistry, slot: ModelSlot):
        self.worker = slot.worker
        self.model_id = slot.spec.id
        self._registry = registry
        self._slot = slot
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self._slot)


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec] | None = None, *, default: str | None = None,
                 max_loaded: int = 1, keep_alive: float = 0.0, step_delay: float = 0.0):
        self.configure(specs or [], default=default, max_loaded=max_loaded, keep_alive=keep_alive,
                       step_delay=step_delay)

    def configure(self, specs: list[ModelSpec], *, default: str | None, max_loaded: int, keep_alive: float = 0.0,
                  step_delay: float = 0.0) -> None:
        self._slots = {spec.id: ModelSlot(spec) for spec in specs}
        self._names = {name: spec.id for spec in specs for name in spec.names}
        self.default = default or (specs[0].id if specs else "")
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.step_delay = step_delay
        self._reaper: asyncio.Task | None = None

    # --- the catalogue ---------------------------------------------------------------

    def specs(self) -> list[ModelSpec]:
        return [slot.spec for slot in self._slots.values()]

    def resolve(self, name: str) -> ModelSpec:
        """The entry an id or alias names; 404 if none."""
        model_id = self._names.get(name)
        if model_id is None:
            raise model_not_found(name)
        return self._slots[model_id].spec

    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def statuses(self) -> list[dict]:
        return [slot.status() for slot in self._slots.values()]

    def max_model_len(self, spec: ModelSpec) -> int | None:
        """The tokens one sequence of the model may hold (its effective context): the
        loaded engine's, else read from its folder; None if that cannot be read."""
        slot = self._slots.get(spec.id)
        if slot is not None and slot.loaded:
            return slot.worker.context_length
        length = spec.model_options.max_model_len
        return folder_context(spec.path, spec.engine_options, settings.MAX_MODEL_LEN if length is None else length)

    def workers(self) -> list[EngineWorker]:
        """The engines loaded now."""
        return [slot.worker for slot in self._slots.values() if slot.worker is not None and slot.state == "loaded"]

    # --- requests ---------------------------------------------------------------------

    async def acquire(self, name: str) -> ModelUse:
        """Hold the model ``name`` (id or alias) for a request, loading it first if it is
        not loaded (requests arriving meanwhile share that load). 404 for a name not in
        the catalogue, 503 if it cannot be loaded now."""
        slot = self._slots[self.resolve(name).id]
        while not slot.loaded:
            await self._load(slot)
        slot.in_flight += 1
        slot.last_used = clock.seconds()
        return ModelUse(self, slot)

    def _release(self, slot: ModelSlot) -> None:
        slot.in_flight -= 1
        slot.last_used = clock.seconds()

    # --- loading and unloading ---------------------------------------------------------

    async def load(self, name: str) -> dict:
        """Load ``name`` now if it is not loaded (management); its status."""
        slot = self._slots[self.resolve(name).id]
        while not slot.loaded:
            await self._load(slot)
        slot.last_used = clock.seconds()
        return slot.status()

    async def unload(self, name: str) -> dict:
        """Unload ``name`` (management); 409 while it has requests in flight."""
        slot = self._slots[self.resolve(name).id]
        while slot._transition is not None:
            await asyncio.shield(slot._transition)
        if slot.in_flight:
            raise ModelBusy(f"The model '{slot.spec.id}' has {slot.in_flight} requests in flight; "
                            "it can be unloaded once they end.")
        if slot.worker is not None:
            await self._unload(slot)
        return slot.status()

    async def _load(self, slot: ModelSlot) -> None:
        """Bring ``slot`` towards loaded, or raise 503: start its load (or, for an engine
        that died, its unload) unless a transition is under way, and wait for it. The
        caller checks again. The transition is a task of its own: a waiter that is
        cancelled (its client left) leaves it to finish, never half done."""
        if slot._transition is None:
            if slot.worker is not None:  # its engine died: clear it away before loading again
                self._begin(slot, self._unload_now(slot))
            else:
                await self._make_room(slot)
                if slot._transition is None and not slot.loaded:
                    slot.state, slot.error = "loading", None
                    self._begin(slot, self._load_now(slot))
        if slot._transition is not None:
            await asyncio.shield(slot._transition)
        if slot.state == "failed" and not slot.loaded:
            raise _load_failed(slot)

    def _begin(self, slot: ModelSlot, transition) -> None:
        slot._transition = asyncio.get_running_loop().create_task(transition)

    async def _load_now(self, slot: ModelSlot) -> None:
        worker = self._new_worker(slot)
        started, rss_before = time.perf_counter(), _resident_bytes()
        try:
            await asyncio.to_thread(worker.start)
        except ModelLoadError as exc:
            slot.state, slot.error = "failed", str(exc)
            log.warning("model %s failed to load: %s", slot.spec.id, exc)
        else:
            self._loaded(slot, worker, started, rss_before)
            log.info("model %s loaded in %.1fs", slot.spec.id, slot.load_seconds)
            self._ensure_reaper()
        finally:
            slot._transition = None

    async def _unload(self, slot: ModelSlot) -> None:
        if slot._transition is None:
            slot.state = "unloading"
            self._begin(slot, self._unload_now(slot))
        await asyncio.shield(slot._transition)

    async def _unload_now(self, slot: ModelSlot) -> None:
        worker = slot.worker
        try:
            if worker is not None:
                await asyncio.to_thread(worker.stop)
        finally:
            slot.worker = None
            slot.state = "unloaded"
            slot.loaded_at = slot.memory_bytes = None
            slot._transition = None
        log.info("model %s unloaded", slot.spec.id)

    async def _make_room(self, slot: ModelSlot) -> None:
        """Unload least recently used idle models until ``slot`` fits under the limit;
        503 if every loaded model is busy."""
        while True:
            occupying = [s for s in self._slots.values() if s is not slot and (s.worker is not None or s._transition)]
            if len(occupying) < self.max_loaded:
                return
            idle = [s for s in occupying if s.in_flight == 0 and s._transition is None]
            if not idle:
                raise ModelCapacity(
                    f"The model '{slot.spec.id}' cannot be loaded now: the server holds at most "
                    f"{self.max_loaded} models in memory and all are serving requests. Retry shortly.",
                    headers={"Retry-After": "2"},
                )
            victim = min(idle, key=lambda s: s.last_used)
            log.info("unloading model %s (least recently used) to load %s", victim.spec.id, slot.spec.id)
            await self._unload(victim)

    # --- keep-alive ----------------------------------------------------------------------

    def _ensure_reaper(self) -> None:
        if self.keep_alive > 0 and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._unload_idle_forever(), name="model-keep-alive")

    async def _unload_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.keep_alive / 4, 5.0))
            await self.unload_idle()

    async def unload_idle(self) -> None:
        """Unload every loaded model idle for keep_alive seconds or more by
        :func:`llmserver.clock.seconds` (none if keep_alive is 0)."""
        if self.keep_alive <= 0:
            return
        now = clock.seconds()
        for slot in list(self._slots.values()):
            if (slot.loaded and slot.in_flight == 0 and slot._transition is None
                    and now - slot.last_used >= self.keep_alive):
                log.info("unloading model %s: idle for %.0fs", slot.spec.id, now - slot.last_used)
                await self._unload(slot)

    # --- start and stop --------------------------------------------------------------------

    def preload(self) -> None:
        """Load the default model and those marked ``preload``, before serving starts
        (no event loop yet). A failure stops the server: it names the model and cause."""
        for slot in self._slots.values():
            if slot.spec.id == self.default or slot.spec.preload:
                worker = self._new_worker(slot)
                started, rss_before = time.perf_counter(), _resident_bytes()
                try:
                    worker.start()
                except ModelLoadError as exc:
                    raise ModelLoadError(_start_failure(slot.spec, exc)) from None
                self._loaded(slot, worker, started, rss_before)

    def _new_worker(self, slot: ModelSlot) -> EngineWorker:
        spec = slot.spec
        worker_class = import_string(settings.ENGINE_WORKER_CLASS)
        return worker_class(spec.id, spec.path, max_batch_size=spec.max_batch_size, step_delay=self.step_delay,
                            options=spec.engine_options, model_options=spec.model_options)

    @staticmethod
    def _loaded(slot: ModelSlot, worker: EngineWorker, started: float, rss_before: int) -> None:
        slot.worker, slot.state = worker, "loaded"
        slot.loads += 1
        slot.loaded_at, slot.load_seconds = time.time(), time.perf_counter() - started
        slot.memory_bytes = max(0, _resident_bytes() - rss_before) or None
        slot.last_used = clock.seconds()

    def stop_all(self) -> None:
        for slot in self._slots.values():
            if slot.worker is not None:
                slot.worker.stop()
            slot.worker, slot.state = None, "unloaded"


def _load_failed(slot: ModelSlot) -> ModelUnavailable:
    return ModelUnavailable(f"The model '{slot.spec.id}' could not be loaded: {slot.error}", headers={"Retry-After": "5"})


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --- configuration ------------------------------------------------------------------------


def specs_from_settings() -> tuple[list[ModelSpec], str]:
    """The catalogue and default model: MODELS_CONFIG if set, else MODEL_PATH/MODEL_ID."""
    if settings.MODELS_CONFIG:
        return read_models_config(settings.MODELS_CONFIG)
    spec = ModelSpec(settings.MODEL_ID, str(Path(settings.MODEL_PATH).expanduser()),
                     max_batch_size=settings.MAX_BATCH_SIZE, model_options=ModelOptions(
                         max_model_len=settings.MAX_MODEL_LEN, chat_template=settings.CHAT_TEMPLATE or None,
                         tool_parser=settings.TOOL_PARSER, reasoning_parser=settings.REASONING_PARSER,
                         generation_defaults=settings.GENERATION_DEFAULTS))
    return [spec], spec.id


_OPTION_KEYS = {"max_model_len", "chat_template", "tool_parser", "reasoning_parser", "generation_defaults"}
_ENTRY_KEYS = {"id", "path", "aliases", "max_batch_size", "engine_options", "preload", "prices", *_OPTION_KEYS}


def _prices(entry: dict, where: str) -> tuple[Decimal, Decimal] | None:
    """The entry's ``prices = { prompt = ..., completion = ... }`` per million tokens."""
    if "prices" not in entry:
        return None
    prices = entry["prices"]
    if not isinstance(prices, dict) or set(prices) != {"prompt", "completion"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 10**8 for v in prices.values()):
        raise ModelsConfigError(f"{where}: 'prices' must be {{ prompt = ..., completion = ... }}, "
                                "each a number of at least 0 (per million tokens)")
    return Decimal(str(prices["prompt"])), Decimal(str(prices["completion"]))


def _model_options(entry: dict, where: str) -> ModelOptions:
    """The entry's ModelOptions; the environment's defaults where it says nothing."""
    length = entry.get("max_model_len", settings.MAX_MODEL_LEN)
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ModelsConfigError(f"{where}: 'max_model_len' must be an integer of at least 2")
    for key in ("chat_template", "tool_parser", "reasoning_parser"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise ModelsConfigError(f"{where}: '{key}' must be a non-empty string")
    tool_parser = entry.get("tool_parser", "auto")
    if tool_parser not in ("auto", "none", *PARSERS):
        raise ModelsConfigError(f"{where}: unknown tool_parser '{tool_parser}' (one of: auto, none, {', '.join(PARSERS)})")
    defaults = entry.get("generation_defaults", False)
    if not isinstance(defaults, bool):
        raise ModelsConfigError(f"{where}: 'generation_defaults' must be true or false")
    return ModelOptions(max_model_len=length, chat_template=entry.get("chat_template"),
                        tool_parser=entry.get("tool_parser", "auto"),
                        reasoning_parser=entry.get("reasoning_parser", "auto"), generation_defaults=defaults)


def read_models_config(path: str) -> tuple[list[ModelSpec], str]:
    """Parse a MODELS_CONFIG file::

        default = "demo"            # optional: the first model otherwise

        [[models]]
        id = "demo"
        path = "models/demo"        # relative paths are relative to the file
        aliases = ["gpt-3.5-turbo"] # optional
        max_batch_size = 8          # optional: MAX_BATCH_SIZE otherwise
        preload = false             # optional: load at start (the default model always is)
        max_model_len = 4096        # optional: MAX_MODEL_LEN otherwise (inference/model_options.py)
        chat_template = "x.jinja"   # optional: replaces the model's own template
        tool_parser = "auto"        # optional: "auto", "none" or a parser's name
        reasoning_parser = "auto"   # optional: "auto", "none" or a parser's name
        generation_defaults = false # optional: the model's sampling settings fill omitted ones
        prices = { prompt = 0.15, completion = 0.6 }  # optional: per million tokens, in COST_CURRENCY
        [models.engine_options]     # optional: merged into genai_config.json at load
        search = { repetition_penalty = 1.1 }
    """
    file = Path(path).expanduser()
    if not file.is_absolute():
        file = Path(settings.BASE_DIR) / file
    try:
        data = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelsConfigError(f"MODELS_CONFIG={path}: {exc}") from None
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ModelsConfigError(f"MODELS_CONFIG={path}: needs at least one [[models]] entry")
    specs, names = [], set()
    for number, entry in enumerate(entries, 1):
        where = f"MODELS_CONFIG={path}: model {number}"
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ModelsConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("id"), str) or not entry["id"] or not isinstance(entry.get("path"), str):
            raise ModelsConfigError(f"{where}: needs an 'id' and a 'path'")
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise ModelsConfigError(f"{where}: 'aliases' must be a list of names")
        batch = entry.get("max_batch_size", settings.MAX_BATCH_SIZE)
        if not isinstance(batch, int) or batch < 1:
            raise ModelsConfigError(f"{where}: 'max_batch_size' must be a positive integer")
        options = entry.get("engine_options", {})
        if not isinstance(options, dict):
            raise ModelsConfigError(f"{where}: 'engine_options' must be a table")
        for name in (entry["id"], *aliases):
            if name in names:
                raise ModelsConfigError(f"{where}: the name '{name}' is used twice")
            names.add(name)
        model_path = Path(entry["path"]).expanduser()
        if not model_path.is_absolute():
            model_path = file.parent / model_path
        specs.append(ModelSpec(entry["id"], str(model_path), tuple(aliases), batch, options,
                               bool(entry.get("preload", False)), _model_options(entry, where), _prices(entry, where)))
    default = data.get("default", specs[0].id)
    if default not in {spec.id for spec in specs}:
        raise ModelsConfigError(f"MODELS_CONFIG={path}: the default '{default}' is not a model id")
    return specs, default


registry = ModelRegistry()


def configure_registry() -> None:
    """Fill :data:`registry` from the settings (raises ModelsConfigError)."""
    specs, default = specs_from_settings()
    registry.configure(specs, default=default, max_loaded=settings.MAX_LOADED_MODELS,
                       keep_alive=settings.MODEL_KEEP_ALIVE_SECONDS, step_delay=settings.ENGINE_STEP_DELAY_MS / 1000)


def load_configured_models() -> None:
    """Called once, when the ASGI application starts: read the catalogue and load the
    default model (and any marked preload)."""
    try:
        configure_registry()
    except ModelsConfigError as exc:
        raise ModelLoadError(f"llmserver: {exc}") from None
    registry.preload()


def _start_failure(spec: ModelSpec, exc: ModelLoadError) -> str:
    if settings.MODELS_CONFIG:
        return f"llmserver: cannot serve model '{spec.id}' ({spec.path}): {exc}"
    return f"llmserver: cannot serve MODEL_PATH={settings.MODEL_PATH}: {exc}"
