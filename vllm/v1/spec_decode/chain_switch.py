"""Adaptive draft length with chained steps: per batch-size bucket, chained speculation (k
drafts for every request, every step) or plain steps, whichever measured more tokens per
second.

A chained step (chain.py) verifies k drafts for every request of the batch in one launch with
static shapes, so a per-request length (AdaptiveDraftController's choice) does not fit it; with
chaining, adaptive draft length chooses per batch size between k and 0. The engine runs
"stints" of `stint` steps in one mode and measures the tokens it emitted per second over each
(the first `settle` steps of a stint, which pay the switch: a drain, or a synchronous step that
drafts for the chain's entry, are not measured). Per bucket it keeps a weighted estimate for
each mode. After a stint it takes the better mode; the losing one is measured again after
`explore` stints (doubling each time it still loses, up to EXPLORE_MAX; back to EXPLORE_MIN
when it wins), so exploration costs at most one stint in EXPLORE_MIN + 1 and, where one mode
keeps winning, soon about one in EXPLORE_MAX + 1. Unmeasured modes are tried first."""
from __future__ import annotations

import time
from typing import Callable, Optional

from vllm.v1.spec_decode.adaptive import AdaptiveStats, bucket

STINT = 24
SETTLE = 3
EXPLORE_MIN = 2
EXPLORE_MAX = 64
WEIGHT = 0.5            # weight of the newest stint in a mode's estimate
MODES = ("chain", "plain")


class ChainModeSwitch:
    def __init__(self, k: int, stint: int = STINT, settle: int = SETTLE,
                 clock: Callable[[], float] = time.perf_counter):
        if not 0 <= settle < stint:
            raise ValueError(f"need 0 <= settle < stint, got settle={settle} stint={stint}")
        self.k = k
        self.stint, self.settle, self.clock = stint, settle, clock
        self.rate: dict[tuple[int, str], float] = {}     # (bucket, mode) -> tokens/s
        self.explore: dict[int, int] = {}                # bucket -> stints between explorations
        self.since: dict[int, int] = {}                  # bucket -> stints since the last one
        self.mode = "chain"
        self.exploring = False      # the current stint re-measures the losing mode
        self._bucket: Optional[int] = None
        self._steps = 0
        self._t0: Optional[float] = None
        self._tok0 = 0
        # the adaptive controller's counters: spec = chained-mode steps, probes = explorations
        self.stats = AdaptiveStats()

    def step(self, num_running: int, tokens: int) -> str:
        """At the start of every engine step: num_running requests, `tokens` generated so far
        (a running count). Returns this step's mode, "chain" or "plain"."""
        now = self.clock()
        b = bucket(num_running)
        if self._bucket != b:
            self._begin(b, now, tokens)     # another bucket: its own estimates, a new stint
        else:
            self._steps += 1
            if self._steps == self.settle:
                self._t0, self._tok0 = now, tokens
            if self._steps >= self.stint:
                self._end(b, now, tokens)
                self._begin(b, now, tokens)
        if self.mode == "chain":
            self.stats.steps_spec += 1
            self.stats.k_hist[self.k] += 1
        else:
            self.stats.steps_plain += 1
            self.stats.k_hist[0] += 1
        return self.mode

    def _end(self, b: int, now: float, tokens: int) -> None:
        if self._t0 is None or now <= self._t0:
            return
        r = (tokens - self._tok0) / (now - self._t0)
        key = (b, self.mode)
        old = self.rate.get(key)
        self.rate[key] = r if old is None else (1 - WEIGHT) * old + WEIGHT * r
        if self.exploring:
            other = self.rate.get((b, _other(self.mode)))
            won = other is not None and self.rate[key] > other
            interval = self.explore.get(b, EXPLORE_MIN)
            self.explore[b] = EXPLORE_MIN if won else min(2 * interval, EXPLORE_MAX)

    def _begin(self, b: int, now: float, tokens: int) -> None:
        mode, exploring = self._choose(b)
        if mode != self.mode:
            self.mode = mode
        self.exploring = exploring
        if exploring:
            self.stats.probes += 1
        self._bucket = b
        self._steps = 0
        self._t0, self._tok0 = (now, tokens) if self.settle == 0 else (None, 0)

    def _choose(self, b: int) -> tuple[str, bool]:
        """-> (mode, whether it is an exploration of the losing mode)."""
        for m in MODES:
            if (b, m) not in self.rate:
                return m, False         # unmeasured: measure it first
        best = max(MODES, key=lambda m: self.rate[(b, m)])
        n = self.since.get(b, 0) + 1
        if n > self.explore.get(b, EXPLORE_MIN):
            self.since[b] = 0
            return _other(best), True
        self.since[b] = n
        return best, False


def _other(mode: str) -> str:
    return "plain" if mode == "chain" else "chain"
