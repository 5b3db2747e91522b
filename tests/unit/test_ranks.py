"""Replica ranks as the controller plans them (Ray's rules: lowest free rank for a new
replica, the same rank for a replacement, contiguous 0..N-1 once steady)."""

from __future__ import annotations

from actors.context import ReplicaRank
from actors.runtime import ranks


def _record(rank: int, node_rank: int = 0, local_rank: int = 0, world_size: int = 2) -> dict[str, int]:
    return {"rank": rank, "node_rank": node_rank, "local_rank": local_rank, "world_size": world_size}


def test_new_replicas_get_the_lowest_free_ranks() -> None:
    # Given a fresh deployment of three replicas on two nodes
    changes = ranks.plan([("a", "n1", None), ("b", "n2", None), ("c", "n1", None)], world_size=3, compact=False)
    # Then ranks are 0..2, nodes 0..1, and local ranks count per node
    assert sorted(c["rank"] for c in changes.values()) == [0, 1, 2]
    assert {changes["a"]["node_rank"], changes["b"]["node_rank"]} == {0, 1}
    assert changes["a"]["node_rank"] == changes["c"]["node_rank"]
    assert {changes["a"]["local_rank"], changes["c"]["local_rank"]} == {0, 1}
    assert changes["b"]["local_rank"] == 0
    assert all(c["world_size"] == 3 for c in changes.values())


def test_a_replacement_takes_the_rank_of_the_replica_it_replaces_and_others_keep_theirs() -> None:
    # Given ranks 0 and 2 held, rank 1's replica having died
    held = [("a", "n1", _record(0, world_size=3)), ("c", "n1", _record(2, local_rank=1, world_size=3))]
    changes = ranks.plan(held + [("d", "n1", None)], world_size=3, compact=False)
    # Then only the new replica gets a record, with rank 1
    assert set(changes) == {"d"}
    assert changes["d"]["rank"] == 1 and changes["d"]["local_rank"] == 2


def test_nothing_changes_when_ranks_are_already_right() -> None:
    held = [("a", "n1", _record(0)), ("b", "n2", _record(1, node_rank=1))]
    assert ranks.plan(held, world_size=2, compact=True) == {}


def test_a_steady_deployment_is_renumbered_contiguously_moving_as_few_as_possible() -> None:
    # Given a downscale that left ranks 0 and 3 (of a target of 2)
    held = [("a", "n1", _record(0, world_size=4)), ("d", "n1", _record(3, local_rank=1, world_size=4))]
    # When the deployment is not steady yet, ranks stay; the world size follows the target
    assert {rid: c["rank"] for rid, c in ranks.plan(held, world_size=2, compact=False).items()} == {"a": 0, "d": 3}
    # When it is steady, only the replica out of range moves
    changes = ranks.plan(held, world_size=2, compact=True)
    assert changes["d"]["rank"] == 1 and changes["a"]["rank"] == 0


def test_duplicate_ranks_are_resolved_to_distinct_ones() -> None:
    # Given two records claiming rank 0 (restored after Redis lost its data, say)
    held = [("a", "n1", _record(0)), ("b", "n2", _record(0))]
    changes = ranks.plan(held, world_size=2, compact=False)
    assert "a" not in changes and changes["b"]["rank"] == 1
    # Two nodes claiming node rank 0 are told apart too
    assert changes["b"]["node_rank"] == 1


def test_assign_keeps_valid_claims_and_fills_gaps() -> None:
    assert ranks.assign({"x": 5, "y": None, "z": 0}, compact=False) == {"x": 5, "z": 0, "y": 1}
    assert ranks.assign({"x": 5, "y": None, "z": 0}, compact=True) == {"z": 0, "x": 1, "y": 2}


def test_rank_of_reads_a_record_and_defaults_without_one() -> None:
    assert ranks.rank_of(_record(1, 1, 0, 4)) == (ReplicaRank(1, 1, 0), 4)
    assert ranks.rank_of(None) == (ReplicaRank(0, 0, 0), 1)
    assert ranks.rank_of({"rank": "bad", "world_size": True}) == (ReplicaRank(0, 0, 0), 1)
