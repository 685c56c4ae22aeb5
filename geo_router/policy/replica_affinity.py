"""Which replica of a region takes a request: prefix affinity under a load bound. Pure:
request counts, prompt blocks and a clock in, a replica out; the region's Serve ingress
(geo_router/live/serve_replica_router.py) and the routing simulator call the same code.

- **Memory.** Per replica, the prompt blocks sent there, least recently used first out
  (a prompt's tail before its head), at most `remembered_blocks` of them. Block keys are
  chained: a block's key covers the whole prefix to its end.
- **Affinity.** A request goes to the replicas holding the longest prefix of its blocks.
- **New conversations.** When that prefix is under `min_match` of the request's blocks (a
  new conversation, or one forgotten), it goes to the replica that has been sent the
  fewest new blocks lately (blocks it did not hold, decayed with `work_half_life_s`): the
  one with the least prefill work behind it, so conversations spread by the work they bring.
- **Load.** Among those, the replica with the fewest requests. When the replicas' request
  counts differ by more than `max_imbalance`, load alone decides: the replica with the
  fewest requests, as `balance leastconn` would.

This is the shape of Ray Serve LLM's `PrefixCacheAffinityRouter`, which is not used itself:
in Ray 2.60, asked only to pick (as HAProxy's ingress request router asks), it records
nothing and its ties go to the first replica, so it sent every request to one replica.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field


class ReplicaAffinityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_match: float = Field(default=0.1, ge=0, le=1)
    max_imbalance: int = Field(default=8, ge=0)
    remembered_blocks: int = Field(default=16_384, ge=1)
    work_half_life_s: float = Field(default=3600.0, gt=0)


class ReplicaAffinity:
    """One region's (one deployment's) memory of where prompt blocks went, and the choice."""

    def __init__(self, config: ReplicaAffinityConfig | None = None) -> None:
        self.config = config or ReplicaAffinityConfig()
        self._blocks: dict[Hashable, OrderedDict[int, None]] = {}
        self._work: dict[Hashable, float] = {}  # new blocks sent lately, decayed to `_now`
        self._now = -math.inf

    def retain(self, replicas: Iterable[Hashable]) -> None:
        """Forget the replicas not among `replicas` (the deployment's replicas now)."""
        for gone in self._blocks.keys() - set(replicas):
            del self._blocks[gone], self._work[gone]

    def choose(self, requests: Mapping[Hashable, int], blocks: Sequence[int], now_s: float) -> Hashable:
        """The replica for a request with prompt `blocks` at `now_s`, among `requests` (each
        candidate replica's requests, running and waiting; at least one). Remembers the choice."""
        if now_s > self._now:
            decay = 0.5 ** ((now_s - self._now) / self.config.work_half_life_s)
            self._work = {replica: work * decay for replica, work in self._work.items()}
            self._now = now_s
        memory = {replica: self._blocks.setdefault(replica, OrderedDict()) for replica in requests}
        work = {replica: self._work.setdefault(replica, 0.0) for replica in requests}

        candidates = list(requests)
        if blocks and max(requests.values()) - min(requests.values()) <= self.config.max_imbalance:
            holders, matched = candidates, 0
            for block in blocks:
                holding = [replica for replica in holders if block in memory[replica]]
                if not holding:
                    break
                holders, matched = holding, matched + 1
            if matched < self.config.min_match * len(blocks):
                least = min(work.values())
                holders = [replica for replica in candidates if work[replica] == least]
            candidates = holders
        chosen = min(candidates, key=lambda replica: requests[replica])

        remembered = memory[chosen]
        # Leading blocks last, so the least recently used go first: a prompt's tail before
        # its head, whose loss would lose the match of every block after it.
        for block in reversed(blocks):
            if block not in remembered:
                self._work[chosen] += 1.0
            remembered[block] = None
            remembered.move_to_end(block)
        while len(remembered) > self.config.remembered_blocks:
            remembered.popitem(last=False)
        return chosen
