"""Stop sequences, matched by the server on decoded text.

The engine's CPU scheduler cannot match stop strings itself, so the server does, on the
text as it streams. Text that might be the start of a stop sequence is held back until
the next piece decides it, so no part of a stop sequence ever reaches the client.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Take newly decoded text; return what may be sent now. After a stop sequence is
        seen, ``stopped`` is True and the text from the stop sequence on is dropped."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        pending = self._held + text
        cut = min((i for i in (pending.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return pending[:cut]
        keep = self._longest_partial_match(pending)
        self._held = pending[len(pending) - keep:] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """At the end of generation without a stop: release what was held back."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial_match(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best
