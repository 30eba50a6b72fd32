"""Device-time windows: episodes at their edges, late readings, cumulative time, aggregates.

A slow reference written from the rules in windows.py's docstring checks the fast one, on
in-order streams exactly and on shuffled streams through the invariants the rules promise.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_node.contracts.windows import (
    CAUSE_CAP,
    LATE_HORIZON_MS,
    PRUNE_AT,
    Aggregates,
    Cumulative,
    Episodes,
    Fire,
    cap_cause,
)

M = 60_000


def feed(ep: Episodes, samples: list[tuple[int, bool]]) -> list[tuple[int, int, bool]]:
    """Feed (t, cond) with idx = position; return (start, at, late) of each fire."""
    out: list[tuple[int, int, bool]] = []
    for idx, (t, cond) in enumerate(samples):
        out.extend((f.start, f.at, f.late) for f in ep.add(t, idx, cond))
    return out


def test_for_fires_at_exactly_the_duration_not_a_millisecond_before() -> None:
    ep = Episodes(for_ms=15 * M)
    assert feed(ep, [(0, True), (5 * M, True), (15 * M - 1, True)]) == []
    fires = ep.add(15 * M, 3, True)
    assert [(f.start, f.at, f.cause) for f in fires] == [(0, 15 * M, (0, 1, 2, 3))]
    assert ep.add(16 * M, 4, True) == ()                   # same episode: once


def test_a_false_reading_ends_the_episode_and_a_new_one_fires_again() -> None:
    ep = Episodes(for_ms=0)
    assert feed(ep, [(0, True), (1, True), (2, False), (3, True), (4, False)]) == [
        (0, 0, False), (3, 3, False)]


def test_edge_needs_a_false_sample_before_the_run() -> None:
    ep = Episodes(edge=True)
    # starts outside: no exit until it was inside first
    assert feed(ep, [(0, True), (1, True), (2, False), (3, True)]) == [(3, 3, False)]


def test_a_late_reading_completing_an_episode_fires_it_in_the_past() -> None:
    ep = Episodes(for_ms=10 * M)
    feed(ep, [(0, True), (5 * M, True), (20 * M, False)])
    fires = ep.add(12 * M, 9, True)
    assert [(f.start, f.at, f.late) for f in fires] == [(0, 12 * M, True)]


def test_a_late_reading_inside_a_fired_episode_emits_nothing() -> None:
    ep = Episodes(for_ms=10 * M)
    assert feed(ep, [(0, True), (10 * M, True), (20 * M, True)]) == [(0, 10 * M, False)]
    assert ep.add(15 * M, 7, True) == ()
    assert ep.add(5 * M, 8, True) == ()


def test_a_late_false_splitting_before_the_fire_point_emits_nothing() -> None:
    ep = Episodes(for_ms=10 * M)
    feed(ep, [(0, True), (10 * M, True), (30 * M, True), (45 * M, True)])
    assert ep.add(5 * M, 9, False) == ()           # second part overlaps the fired interval


def test_a_late_false_splitting_after_the_fire_point_makes_a_new_episode() -> None:
    ep = Episodes(for_ms=10 * M)
    feed(ep, [(0, True), (10 * M, True), (30 * M, True), (45 * M, True)])
    fires = ep.add(20 * M, 9, False)
    assert [(f.start, f.at, f.late) for f in fires] == [(30 * M, 45 * M, True)]


def test_the_same_entry_twice_is_ignored() -> None:
    ep = Episodes(for_ms=0)
    assert len(ep.add(5, 1, True)) == 1
    assert ep.add(5, 1, True) == ()
    assert len(ep.samples) == 1


def test_old_samples_are_dropped_and_readings_older_than_them_are_too_late() -> None:
    ep = Episodes(for_ms=0)
    for i in range(PRUNE_AT + 10):
        ep.add(i * M, i, False)
    assert len(ep.samples) < PRUNE_AT
    assert ep.add(0, 10**6, True) == ()
    assert ep.too_late == 1
    newest = ep.samples[-1][0]
    assert ep.samples[0][0] > 0
    # within the horizon a late reading still counts (here: a new episode, fired late)
    fires = ep.add(newest - LATE_HORIZON_MS // 2 + 1, 10**6 + 1, True)
    assert [f.late for f in fires] == [True]


def test_cause_is_capped_to_first_and_last_halves_with_the_count() -> None:
    cause, count = cap_cause(list(range(200, 0, -1)))
    assert count == 200
    assert len(cause) == CAUSE_CAP
    assert cause[:3] == (1, 2, 3) and cause[-1] == 200
    assert list(cause) == sorted(cause)


def test_cumulative_fires_when_the_total_reaches_the_limit() -> None:
    cu = Cumulative(60 * M)
    # 30 min true, 10 min false, then true again: the total reaches 60 min at t = 70 min
    assert cu.add(0, 0, True) is None
    assert cu.add(30 * M, 1, False) is None
    assert cu.add(40 * M, 2, True) is None
    assert cu.add(70 * M - 1, 3, True) is None
    assert cu.total_ms == 60 * M - 1
    fire = cu.add(70 * M, 4, True)
    assert fire is not None and fire.total_ms == 60 * M and fire.at == 70 * M
    assert fire.cause == (0, 2, 3, 4)
    assert cu.add(80 * M, 5, True) is None          # once per scope


def test_cumulative_counts_a_late_reading_at_its_place() -> None:
    cu = Cumulative(60 * M)
    cu.add(0, 0, True)
    cu.add(60 * M, 1, False)                         # true 0..60 -> 60 min: fires
    assert cu.fired
    cu2 = Cumulative(60 * M)
    cu2.add(0, 0, True)
    cu2.add(50 * M, 1, True)
    cu2.add(60 * M, 2, False)
    assert cu2.fired
    cu3 = Cumulative(60 * M)
    cu3.add(0, 0, True)
    cu3.add(60 * M, 2, False)
    assert cu3.fired and cu3.total_ms == 60 * M
    cu4 = Cumulative(60 * M)
    cu4.add(0, 0, True)
    cu4.add(50 * M, 1, False)                       # 50 min
    assert not cu4.fired
    fire = cu4.add(30 * M, 2, False)                # late: the truth was 30 min
    assert fire is None and cu4.total_ms == 30 * M
    fire = cu4.add(55 * M, 3, True)
    assert fire is None and cu4.total_ms == 30 * M  # last sample holds nothing yet


def ref_fires(samples: list[tuple[int, int, bool]], for_ms: int, edge: bool
              ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Reference: in a sorted timeline, each maximal run fires at its first sample k with
    t_k - t_first >= for_ms (edge: only after a false sample)."""
    out = []
    i = 0
    while i < len(samples):
        if not samples[i][2]:
            i += 1
            continue
        j = i
        while j + 1 < len(samples) and samples[j + 1][2]:
            j += 1
        if not edge or (i > 0 and not samples[i - 1][2]):
            k = next((k for k in range(i, j + 1) if samples[k][0] - samples[i][0] >= for_ms),
                     None)
            if k is not None:
                out.append((samples[i][:2], samples[k][:2]))
        i = j + 1
    return out


def runs(samples: list[tuple[int, int, bool]]) -> list[tuple[int, int]]:
    out = []
    i = 0
    while i < len(samples):
        if samples[i][2]:
            j = i
            while j + 1 < len(samples) and samples[j + 1][2]:
                j += 1
            out.append((i, j))
            i = j + 1
        else:
            i += 1
    return out


timelines = st.lists(st.tuples(st.integers(0, 120), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(timelines, st.sampled_from([0, 1, 5, 20]), st.booleans())
def test_in_order_streams_fire_exactly_like_the_reference(
        raw: list[tuple[int, bool]], for_ms: int, edge: bool) -> None:
    samples = sorted((t * M, idx, cond) for idx, (t, cond) in enumerate(raw))
    ep = Episodes(for_ms * M, edge)
    got: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for t, idx, cond in samples:
        got.extend(((f.start, f.start_idx), (f.at, f.at_idx)) for f in ep.add(t, idx, cond))
    assert got == ref_fires(samples, for_ms * M, edge)


@settings(max_examples=300, deadline=None)
@given(st.data(), timelines, st.sampled_from([0, 1, 5, 20]), st.booleans())
def test_shuffled_streams_keep_the_late_reading_promises(
        data: st.DataObject, raw: list[tuple[int, bool]], for_ms: int, edge: bool) -> None:
    items = [(t * M, idx, cond) for idx, (t, cond) in enumerate(raw)]
    order = data.draw(st.permutations(items))
    ep = Episodes(for_ms * M, edge)
    fires: list[Fire] = []
    for t, idx, cond in order:
        fires.extend(ep.add(t, idx, cond))
    final = sorted(items)
    assert ep.samples == final
    intervals = [((f.start, f.start_idx), (f.at, f.at_idx)) for f in fires]
    # each episode fires at most once: fired intervals never overlap
    ordered = sorted(intervals)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ordered))
    qualifying = {(s, f) for s, f in ref_fires(final, for_ms * M, edge)}
    for i, j in runs(final):
        first, last = final[i][:2], final[j][:2]
        overlapping = [iv for iv in intervals if iv[0] <= last and iv[1] >= first]
        # a run overlaps at most one fired episode ...
        assert len(overlapping) <= 1
        # ... and every run that qualifies overlaps one (it fired, maybe late)
        if any(s == first for s, _ in qualifying):
            assert overlapping, (first, last, intervals)
    # every cause is a sample of a true run
    true_idx = {idx for _, idx, cond in final if cond}
    assert all(set(f.cause) <= true_idx for f in fires)


values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(st.tuples(st.integers(0, 100), values), min_size=1, max_size=40),
       st.sampled_from([1, 10, 30]))
def test_aggregates_are_exact_and_independent_of_arrival_order(
        data: st.DataObject, raw: list[tuple[int, float | int]], over: int) -> None:
    items = [(t * M, idx, v) for idx, (t, v) in enumerate(raw)]
    order = data.draw(st.permutations(items))
    agg = Aggregates(over * M)
    for t, idx, v in order:
        result = agg.add(t, idx, v)
        assert result is not None
        window = [x for x in agg.samples if t - over * M < x[0] and x[:2] <= (t, idx)]
        exact = sum(Fraction(x[2]) for x in window)
        assert result["count"] == len(window)
        assert result["sum"] == float(exact)
        assert result["avg"] == float(exact / len(window))
        assert result["min"] == min(x[2] for x in window)
        assert result["max"] == max(x[2] for x in window)
    # the final window does not depend on the order the samples came in
    newest = max(items)
    twin = Aggregates(over * M)
    for t, idx, v in sorted(items):
        last = twin.add(t, idx, v)
    check = Aggregates(over * M)
    for t, idx, v in order:
        check.add(t, idx, v)
    assert last is not None
    assert check._scan(newest[0], newest[1]) == last


def test_avg_is_the_correctly_rounded_mean() -> None:
    agg = Aggregates(60 * M)
    vals = [0.1] * 10 + [1e16, 1.0, -1e16]
    result = None
    for i, v in enumerate(vals):
        result = agg.add(i, i, v)
    assert result is not None
    assert result["sum"] == math.fsum(vals)
    assert result["avg"] == float(sum(Fraction(v) for v in vals) / len(vals))
