"""Replica ranks (Ray's ``ReplicaRank`` and ``world_size``), as the controller decides them.

A deployment's replicas have distinct ranks; ``world_size`` is the deployment's target
number of replicas (the autoscaler's current target when it autoscales). The controller
keeps them in the replicas' assignment records (``{ns}:node:{id}:assign``, fields
``rank``, ``node_rank``, ``local_rank`` and ``world_size``), which it reads on every pass
anyway, so they cost no extra Redis state, and survive a new controller leader. A
replica reads its record as it starts (before its constructor runs) and again whenever
its application's events say something changed; the controller publishes a ``RANKS``
event when it rewrites the records of running replicas.

The rules are Ray's (its "Replica ranks" guide):

- a new replica gets the lowest rank no other replica of the deployment holds, so the
  replacement of a replica that died gets its rank, and other replicas keep theirs;
- ranks are made contiguous (0 to N-1) once the deployment is steady at its target
  (after a downscale, or at the end of an upgrade, which starts new replicas beside old
  ones), moving as few replicas as possible;
- ``node_rank`` numbers the workers hosting the deployment, ``local_rank`` the
  deployment's replicas on one worker, by the same rules.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from ..context import ReplicaRank

#: The fields of an assignment record that this module owns.
FIELDS = ("rank", "node_rank", "local_rank", "world_size")

K = TypeVar("K", bound=Hashable)


def plan(replicas: Sequence[tuple[str, str, Mapping[str, Any] | None]], *, world_size: int,
         compact: bool) -> dict[str, dict[str, int]]:
    """The rank fields of every replica whose record must change.

    ``replicas`` are the deployment's assigned replicas as ``(replica id, node, record)``,
    ``record`` None for one being assigned now. ``compact``: the deployment is steady at
    its target, so ranks are renumbered 0 to N-1 if they are not.
    """
    records = {rid: dict(rec or {}) for rid, _, rec in replicas}
    node_of = {rid: node for rid, node, _ in replicas}
    ranks = assign({rid: _int(rec.get("rank")) for rid, rec in records.items()}, compact=compact)
    nodes: dict[str, list[str]] = {}
    for rid in sorted(records, key=lambda r: ranks[r]):
        nodes.setdefault(node_of[rid], []).append(rid)
    node_claims = {node: min((r for r in (_int(records[rid].get("node_rank")) for rid in rids) if r is not None),
                             default=None) for node, rids in nodes.items()}
    node_ranks = assign(node_claims, compact=compact)
    local: dict[str, int] = {}
    for rids in nodes.values():
        local.update(assign({rid: _int(records[rid].get("local_rank")) for rid in rids}, compact=compact))
    changes = {}
    for rid, rec in records.items():
        fields = {"rank": ranks[rid], "node_rank": node_ranks[node_of[rid]], "local_rank": local[rid],
                  "world_size": world_size}
        if any(rec.get(name) != value for name, value in fields.items()):
            changes[rid] = fields
    return changes


def assign(claims: Mapping[K, int | None], *, compact: bool) -> dict[K, int]:
    """Distinct ranks for ``claims`` (each key's current rank, or None): a valid claim is
    kept (of two equal ones, the first in order of the keys' text), the others get the
    lowest free ranks; ``compact`` moves ranks of N and above into the gaps below N."""
    kept: dict[K, int] = {}
    for key in sorted((k for k, r in claims.items() if r is not None), key=lambda k: (claims[k], str(k))):
        rank = claims[key]
        if rank is not None and rank not in kept.values():
            kept[key] = rank
    if compact:
        kept = {k: r for k, r in kept.items() if r < len(claims)}
    taken = set(kept.values())
    free = (r for r in range(len(claims) + len(taken) + 1) if r not in taken)
    moved = sorted((k for k in claims if k not in kept), key=lambda k: (claims[k] is None, claims[k] or 0, str(k)))
    return {**kept, **{key: next(free) for key in moved}}


def rank_of(record: Mapping[str, Any] | None) -> tuple[ReplicaRank, int]:
    """A replica's rank and world size, from its assignment record (0 and 1 when the
    record has none yet: a worker that was started before ranks existed)."""
    record = record or {}
    rank = ReplicaRank(rank=_int(record.get("rank")) or 0, node_rank=_int(record.get("node_rank")) or 0,
                       local_rank=_int(record.get("local_rank")) or 0)
    return rank, _int(record.get("world_size")) or 1


def _int(value: Any) -> int | None:
    """A rank read from a record: a non-negative int, else None (missing or damaged)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
