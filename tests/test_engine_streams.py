"""Sequences on KV streams (edgechat/engines/streams.py): a step over scattered sequences is
packed onto consecutive streams, because llama.cpp runs one forward pass per sequence otherwise
(bench/room.py's overhead rounds show the speed). What a user would notice if the moves were
wrong is a wrong answer, so these tests check answers: sequences decoded in scattered, reversed
groups, with caches moved between streams under them, give exactly the tokens each gives alone."""

from __future__ import annotations

from edgechat.engines.streams import StreamMap
from edgechat.runtime import Runtime
from edgechat.types import Message
from tests.conftest import GREEDY

QUESTIONS = ["What is 2+2?", "Name a fruit that is yellow.", "Say hello in French.", "What is the capital of Italy?"]


def test_moves_put_the_step_on_consecutive_streams_with_fewest_swaps() -> None:
    streams = StreamMap(8)
    assert streams.moves_to_pack([3, 4, 5]) == [] and streams.moves_to_pack([5]) == []
    for seqs in ([0, 2, 4, 6], [7, 6, 0], [1, 5, 7], [0, 7]):
        streams = StreamMap(8)
        moves = streams.moves_to_pack(seqs)
        for a, b in moves:
            streams.swap(a, b)
        placed = sorted(streams.stream(s) for s in seqs)
        assert placed == list(range(placed[0], placed[0] + len(seqs))), (seqs, moves)
        assert len(moves) <= len(seqs) - 1
        assert sorted(streams.stream_of) == list(range(8))  # still a permutation
    assert StreamMap(8).moves_to_pack([0, 1, 2, 7]) == [(7, 3)]  # one swap, not three
    assert StreamMap(4).lowest({3, 1, 2}) == 1


def greedy_tokens(engine, seq: int, ids: list[int], steps: int) -> list[int]:  # noqa: ANN001
    engine.start(seq, GREEDY, 0)
    out = [engine.prefill(seq, ids)]
    for _ in range(steps - 1):
        out.append(engine.decode([(seq, out[-1])])[0])
    return out


def test_scattered_groups_and_moved_caches_answer_as_alone(runtime: Runtime, make_engine) -> None:  # noqa: ANN001
    prompts = [runtime.tokenizer.render([Message(role="user", content=q)]) for q in QUESTIONS]
    alone = make_engine()
    expected = []
    for ids in prompts:
        seq = alone.open_sequence()
        expected.append(greedy_tokens(alone, seq, ids, 24))
        alone.release(seq)

    engine = make_engine(max_sequences=8)
    seqs = [engine.open_sequence() for _ in range(8)]
    mine = [seqs[6], seqs[1], seqs[4], seqs[2]]  # prompts on scattered seqs, others left empty
    got: list[list[int]] = [[] for _ in prompts]
    for i, seq in enumerate(mine):
        engine.start(seq, GREEDY, 0)
        got[i].append(engine.prefill(seq, prompts[i]))
    groups = [[0, 1, 2, 3], [3, 0], [2], [1, 3, 0], [0, 2], [3, 2, 1, 0]]  # reversed, gapped, partial
    step = 0
    while any(len(g) < 24 for g in got):
        group = [i for i in groups[step % len(groups)] if len(got[i]) < 24]
        step += 1
        if group:
            tokens = engine.decode([(mine[i], got[i][-1]) for i in group])
            for i, token in zip(group, tokens, strict=True):
                got[i].append(token)
    assert got == expected
