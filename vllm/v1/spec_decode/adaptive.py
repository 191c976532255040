"""Adaptive draft length: before each step, how many drafts each request gets (0 = none).

The controller maximises the expected tokens per second of the whole batch:

    tokens(k) = sum over requests r of 1 + m_r * (a_r + a_r^2 + ... + a_r^k)
    time(k)   = verify(n_k) + residual(B) + draft(B, k),   n_k = B + sum_r m_r * k
    plain     = B / period of a step without drafts (asynchronous where the engine can)

a_r: the request's per-draft acceptance (draft j is accepted with probability a_r^j), an
exponentially decayed success/failure count with the batch-wide rate as its prior; m_r: how
often the proposer drafts for it at all (n-gram finds no match for some requests). verify(n):
the target forward's time for n tokens, measured once at start-up on the device
(GPUModelRunner.calibrate_verify_cost). residual(B) and draft(B, k): measured online from real
steps per batch-size bucket (host work, the sync, the drafter).

k = 0 is chosen whenever the best speculative estimate does not beat the plain step: the engine
then runs those steps exactly as without speculation (asynchronously), so speculation never
makes it slower than not speculating for long. While k = 0, acceptance is not observed, so a
probe step drafts for a few requests (PROBE_REQS, rotating) every `probe` plain steps; the
interval doubles each time the probe confirms k = 0 (up to PROBE_MAX), is never so short that
probes cost more than PROBE_BUDGET of the time, resets when speculation wins, and probing stops
where even acceptance 1 could not beat the plain step. Unmeasured costs start optimistic (spec:
no residual; plain: the bare forward), so both modes get measured early; a batch-size bucket
not measured yet borrows the nearest measured bucket's per-request costs.

Per request, the batch's k is then trimmed: draft j of request r is worth m_r * a_r^j tokens
and costs the marginal verify time of one more token, so it is kept only while that beats the
batch's expected rate."""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

PROBE_MIN = 8
PROBE_MAX = 1024
PROBE_REQS = 8         # a probe drafts for at most this many requests (rotating)
PROBE_BUDGET = 0.02    # probes may cost at most ~2% of the plain steps' time
DECAY = 0.8            # acceptance memory: ~5 verify windows per request
TIME_WEIGHT = 0.2      # EWMA weight of a new step-time sample
PRIOR_WEIGHT = 2.0     # pseudo-observations of the batch-wide rate behind each request's rate
PLAIN_MARGIN = 0.02    # speculation must beat plain by 2% to be chosen
REEVALUATE = 16        # plain steps between full re-evaluations when nothing new was observed


def bucket(b: int) -> int:
    """Batch-size bucket: 1, 2-3, 4-7, 8-15, ... (costs are kept per bucket)."""
    return max(int(b), 1).bit_length()


class _Ewma:
    __slots__ = ("value",)

    def __init__(self):
        self.value: Optional[float] = None

    def add(self, x: float, w: float = TIME_WEIGHT) -> None:
        self.value = x if self.value is None else (1 - w) * self.value + w * x


@dataclass
class _Acc:
    """Decayed counts of one request's verify windows."""
    succ: float = 0.0       # accepted drafts
    fail: float = 0.0       # windows that ended in a rejection
    matched: float = 0.0    # windows with >= 1 draft
    asked: float = 0.0      # windows the request was offered drafts


@dataclass
class _PlainHold:
    """A plain decision that holds for the next steps of one batch-size bucket."""
    bucket: int
    probe_interval: int     # plain steps between probes (0: never)
    steps_left: int


@dataclass
class AdaptiveStats:
    steps_spec: int = 0
    steps_plain: int = 0
    probes: int = 0
    k_hist: Counter = field(default_factory=Counter)     # batch k chosen -> steps


class AdaptiveDraftController:
    def __init__(self, k_max: int, verify_cost: Optional[dict[int, float]] = None,
                 draft_scales_with_k: bool = True, prior_acceptance: float = 0.5):
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        self.k_max = k_max
        self.draft_scales_with_k = draft_scales_with_k
        self._sizes: list[int] = []
        self._times: list[float] = []
        if verify_cost:
            self._sizes = sorted(verify_cost)
            self._times = [float(verify_cost[s]) for s in self._sizes]
        self.reqs: dict[str, _Acc] = {}
        self.batch = _Acc(succ=prior_acceptance * PRIOR_WEIGHT,
                          fail=(1 - prior_acceptance) * PRIOR_WEIGHT, matched=1.0, asked=1.0)
        self.plain_period: dict[int, _Ewma] = {}
        self.residual: dict[int, _Ewma] = {}
        self.draft_time: dict[int, _Ewma] = {}     # per drafting step (model) or per call
        self.probe = PROBE_MIN
        self.plain_run = 0          # consecutive steps decided plain
        self.probing = False        # the last decision was a probe (its step is not typical)
        self._probe_next = 0        # rotation of the requests a probe drafts for
        # The last full decision was plain. Until something new is observed, steps of its
        # bucket are plain without recomputing anything (the host is the bottleneck at load:
        # this runs every step).
        self._plain_until: Optional[_PlainHold] = None
        self.stats = AdaptiveStats()

    # ------------------------------------------------------------------ costs
    def verify_cost(self, n: float) -> float:
        """Target forward time for n tokens (seconds), interpolated; 0 when not calibrated."""
        s, t = self._sizes, self._times
        if not s:
            return 0.0
        if n <= s[0]:
            return t[0]
        if n >= s[-1]:
            # beyond the largest calibrated size: linear in the tokens
            return t[-1] * n / s[-1]
        i = bisect.bisect_left(s, n)
        x0, x1, y0, y1 = s[i - 1], s[i], t[i - 1], t[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    @staticmethod
    def _per_bucket(table: dict, batch: int) -> float:
        """The bucket's measured value; else the nearest measured bucket's, scaled by the
        batch size (host work grows with the requests); 0 when nothing is measured."""
        b = bucket(batch)
        e = table.get(b)
        if e is not None:
            return e.value
        if not table:
            return 0.0
        near = min(table, key=lambda x: abs(x - b))
        return table[near].value * batch / (1 << (near - 1))

    def _draft_cost(self, batch: int, k: int) -> float:
        d = self._per_bucket(self.draft_time, batch)
        return d * k if self.draft_scales_with_k else d

    # ------------------------------------------------------------------ observations
    def observe_window(self, req_id: str, offered: int, drafted: int, accepted: int) -> None:
        """One verify window (or a step in which the request was offered drafts but the
        proposer had none): offered = its cap, drafted = drafts verified, accepted <= drafted."""
        if offered <= 0:
            return
        self._plain_until = None
        for acc in (self.reqs.setdefault(req_id, _Acc()), self.batch):
            acc.succ = DECAY * acc.succ + accepted
            acc.fail = DECAY * acc.fail + (1.0 if accepted < drafted else 0.0)
            acc.matched = DECAY * acc.matched + (1.0 if drafted else 0.0)
            acc.asked = DECAY * acc.asked + 1.0

    def observe_draft_time(self, batch: int, k: int, seconds: float) -> None:
        self._plain_until = None
        per = seconds / max(k, 1) if self.draft_scales_with_k else seconds
        self.draft_time.setdefault(bucket(batch), _Ewma()).add(per)

    def observe_step(self, speculative: bool, batch: int, num_tokens: int, period: float,
                     draft_seconds: float = 0.0) -> None:
        """A decode-only step's period (start of this step to the start of the next)."""
        b = bucket(batch)
        if speculative:
            self._plain_until = None
            r = period - self.verify_cost(num_tokens) - draft_seconds
            self.residual.setdefault(b, _Ewma()).add(max(r, 0.0))
        else:
            self.plain_period.setdefault(b, _Ewma()).add(period)

    def drop(self, req_id: str) -> None:
        self.reqs.pop(req_id, None)

    # ------------------------------------------------------------------ the decision
    def _rates(self, req_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        g = self.batch
        ga = g.succ / max(g.succ + g.fail, 1e-9)
        gm = g.matched / max(g.asked, 1e-9)
        a = np.empty(len(req_ids))
        m = np.empty(len(req_ids))
        for i, rid in enumerate(req_ids):
            acc = self.reqs.get(rid)
            if acc is None:
                a[i], m[i] = ga, gm
                continue
            a[i] = (acc.succ + PRIOR_WEIGHT * ga) / (acc.succ + acc.fail + PRIOR_WEIGHT)
            m[i] = (acc.matched + PRIOR_WEIGHT * gm) / (acc.asked + PRIOR_WEIGHT)
        return np.clip(a, 0.0, 0.999), np.clip(m, 0.0, 1.0)

    def estimate(self, num_running: int, req_ids: list[str], rates=None):
        """-> (best k, its tokens/s, plain tokens/s, per-request caps at that k)."""
        B = max(num_running, 1)
        a, m = self._rates(req_ids) if rates is None else rates
        ks = np.arange(1, self.k_max + 1)
        # geometric sums a + a^2 + ... + a^k for every request and k: [E, K]
        pw = np.cumsum(a[:, None] ** ks[None, :], axis=1)
        tokens = B + (m[:, None] * pw).sum(axis=0)                  # [K]
        n = B + m.sum() * ks                                         # [K]
        resid = self._per_bucket(self.residual, B)
        t = np.array([self.verify_cost(x) + self._draft_cost(B, int(k)) for x, k in zip(n, ks)])
        rate = tokens / np.maximum(t + resid, 1e-9)
        i = int(np.argmax(rate))
        k, r_spec = int(ks[i]), float(rate[i])
        pp = self.plain_period.get(bucket(B))
        plain_t = pp.value if pp is not None else self.verify_cost(B)
        r_plain = B / max(plain_t, 1e-9)
        # marginal verify seconds of one more token at this size
        slope = (self.verify_cost(n[i] + B) - self.verify_cost(n[i])) / B
        worth = m[:, None] * (a[:, None] ** ks[None, :k]) >= r_spec * slope      # [E, k]
        caps = np.cumprod(worth, axis=1).sum(axis=1)
        return k, r_spec, r_plain, caps

    def _probe_interval(self, num_running: int, req_ids: list[str], r_plain: float) -> int:
        """Plain steps between probes: the backed-off interval, long enough that a probe
        (bounded by a full speculative step) costs at most PROBE_BUDGET; 0 = never probe
        (even if every draft were accepted, speculation could not beat the plain step)."""
        E = len(req_ids)
        _, best, _, _ = self.estimate(num_running, req_ids, (np.full(E, 0.999), np.ones(E)))
        if best <= r_plain * (1 + PLAIN_MARGIN):
            return 0
        B = max(num_running, 1)
        plain_t = B / r_plain
        spec_t = (self.verify_cost(B * (1 + self.k_max)) + self._per_bucket(self.residual, B)
                  + self._draft_cost(B, self.k_max))
        by_cost = int(np.ceil(max(spec_t - plain_t, 0.0) / (PROBE_BUDGET * plain_t)))
        return max(self.probe, min(by_cost, PROBE_MAX))

    def stays_plain(self, num_running: int) -> bool:
        """The cheap check before decide(): True when the next step is plain for certain (the
        last decision was plain for this batch-size bucket, nothing was observed since, no probe
        is due, and fewer than REEVALUATE steps have passed); the step is counted as decided."""
        c = self._plain_until
        if c is None or c.bucket != bucket(num_running) or c.steps_left <= 0:
            return False
        if c.probe_interval and self.plain_run + 1 >= c.probe_interval:
            return False        # a probe is due: decide() takes it
        c.steps_left -= 1
        self.plain_run += 1
        self.stats.steps_plain += 1
        self.stats.k_hist[0] += 1
        return True

    def decide(self, num_running: int, req_ids: list[str]) -> dict[str, int]:
        """Caps for the next step's drafts of req_ids (the requests that can draft), out of
        num_running requests in the batch. An empty dict: no speculation this step."""
        self._plain_until = None
        if not req_ids:
            return {}
        k, r_spec, r_plain, caps = self.estimate(num_running, req_ids)
        was_probe, self.probing = self.probing, False
        if r_spec > r_plain * (1 + PLAIN_MARGIN) and caps.any():
            if was_probe or self.plain_run:
                self.probe = PROBE_MIN
            self.plain_run = 0
            self.stats.steps_spec += 1
            self.stats.k_hist[k] += 1
            return {rid: int(c) for rid, c in zip(req_ids, caps) if c > 0}
        if was_probe:
            self.probe = min(self.probe * 2, PROBE_MAX)
        self.plain_run += 1
        interval = self._probe_interval(num_running, req_ids, r_plain)
        if interval and self.plain_run >= interval:
            # refresh acceptance: a few requests draft at the full length
            self.plain_run = 0
            self.probing = True
            self.stats.probes += 1
            self.stats.steps_spec += 1
            self.stats.k_hist[self.k_max] += 1
            n = min(PROBE_REQS, len(req_ids))
            start = self._probe_next % len(req_ids)
            self._probe_next += n
            chosen = (req_ids + req_ids)[start:start + n]
            return {rid: self.k_max for rid in chosen}
        self.stats.steps_plain += 1
        self.stats.k_hist[0] += 1
        self._plain_until = _PlainHold(bucket(num_running), interval, REEVALUATE)
        return {}
