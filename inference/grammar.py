"""Constrained decoding's grammars, tried alone before they reach a shared Engine.

The Engine compiles a turn's grammar (llguidance) inside its batched step. A grammar it
gives up on there, such as a JSON schema whose required recursion forces an endless
output, fails the step for every turn in the batch and leaves the Engine refusing every
call (see ../shared/engine-notes.md; the worker then restarts it, inference/engine.py
``_restart``). So every grammar a request brings (``response_format``'s schema, the
Responses API's ``text.format``, the tool-call grammar built from ``tools``) is first
compiled here with the same library against the model's own tokenizer and walked a few
tokens, with the Engine's per-step limits and a smaller budget for building the lexer;
one that fails is refused with a 400 naming its parameter, and never reaches the Engine.

The walk follows one path (the longest-merged token allowed at each step), so it cannot
prove that every path the model may take is safe; it catches what fails on any path: a
grammar that does not compile, an endless forced output, a pattern too large to build.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger("llmserver.grammar")

# Tokens walked: enough to pass the forced opening of any output (where an endless
# forced output shows) and to build the first lexer states.
_WALK_TOKENS = 8
# Verdicts remembered per model: an agent sends the same tools with every request.
_CACHED_VERDICTS = 512


class GrammarCheck:
    """One model's grammar check. :meth:`verdict` may be called from any thread (each
    check builds its own interpreter); :meth:`known` answers from the cache alone, so a
    grammar seen before costs the event loop no thread hop."""

    def __init__(self, model_path: str, vocab_size: int, eos_token_ids: list[int]):
        self._model_path = model_path
        self._vocab_size = vocab_size
        self._eos = [int(token) for token in eos_token_ids]
        self._tokenizer = None
        self._unavailable = False
        self._verdicts: collections.OrderedDict[tuple[str, str], str | None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def known(self, kind: str, grammar: str) -> tuple[bool, str | None]:
        """(True, its verdict) for a grammar checked before, else (False, None)."""
        with self._lock:
            if (kind, grammar) not in self._verdicts:
                return False, None
            self._verdicts.move_to_end((kind, grammar))
            return True, self._verdicts[(kind, grammar)]

    def verdict(self, kind: str, grammar: str) -> str | None:
        """Why the Engine could not follow ``grammar`` (og's guidance kind: "json_schema",
        "regex" or "lark_grammar"), or None if it can be given to the Engine."""
        seen, problem = self.known(kind, grammar)
        if not seen:
            problem = self._check(kind, grammar)
            with self._lock:
                self._verdicts[(kind, grammar)] = problem
                if len(self._verdicts) > _CACHED_VERDICTS:
                    self._verdicts.popitem(last=False)
        return problem

    def _check(self, kind: str, grammar: str) -> str | None:
        import llguidance

        tokenizer = self._llg_tokenizer()
        if tokenizer is None:
            return None  # the Engine's restart is the only guard left (logged once)
        matcher = llguidance.LLMatcher
        try:
            if kind == "json_schema":
                source = matcher.grammar_from_json_schema(grammar)
            elif kind == "regex":
                source = matcher.grammar_from_regex(grammar)
            else:
                source = matcher.grammar_from_lark(grammar)
        except ValueError as exc:
            return _one_line(str(exc))
        # The Engine's own per-step limits; a fifth of its fuel for building the lexer, so
        # that a pattern too large to build is refused in tens of milliseconds, not seconds.
        limits = llguidance.LLParserLimits(initial_lexer_fuel=200_000, max_lexer_states=50_000, verbose_errors=False)
        try:
            walker = llguidance.LLInterpreter(tokenizer, source, enable_backtrack=False, enable_ff_tokens=True,
                                              log_level=0, limits=limits)
            walker.start_without_prompt()
            for _ in range(_WALK_TOKENS):
                mask, _info = walker.compute_mask()
                if mask is None:
                    if walker.stop_reason() != "NotStopped":
                        return None
                    walker.commit_token(None)
                    continue
                allowed = np.flatnonzero(np.frombuffer(mask, dtype=np.uint8))
                if not len(allowed) or any(mask[token] for token in self._eos if token < len(mask)):
                    return None  # a complete output, or nothing more to walk
                walker.commit_token(int(allowed[-1]))
        except (ValueError, RuntimeError) as exc:
            return _one_line(str(exc))
        return None

    def _llg_tokenizer(self):
        if self._tokenizer is None and not self._unavailable:
            import llguidance

            try:
                text = (Path(self._model_path) / "tokenizer.json").read_text()
                self._tokenizer = llguidance.LLTokenizer(text, n_vocab=self._vocab_size, eos_token=self._eos)
            except Exception as exc:  # a tokenizer llguidance cannot read: served without the check
                self._unavailable = True
                log.warning("grammars for %s are not checked before generation: %s", self._model_path,
                            _one_line(str(exc)))
        return self._tokenizer


def _one_line(text: str) -> str:
    """An llguidance error on one line, without what may follow it: the parser's state,
    or a listing of the grammar (which repeats the client's own schema back)."""
    for marker in ("<state>", "<non-verbose/>"):
        text = text.split(marker)[0]
    lines = []
    for line in text.splitlines():
        if _LISTING.match(line):
            break
        lines.append(line)
    return " ".join(" ".join(lines).split())[:300] or "invalid grammar"


_LISTING = re.compile(r"^\s+\d+ \| ")
