"""Which llama.cpp KV stream holds which sequence, so every step's sequences sit side by side.

With a KV buffer per sequence (`kv_unified = false`) llama.cpp cuts a batch into micro-batches
that take only *consecutive, increasing* sequence ids (`llama_batch_allocr::split_equal(...,
sequential=true)`: "accept only increasing sequence ids", `batch.seq_id[i][0] == last_seq_id + 1`).
Each micro-batch is a forward pass that reads all the weights, so a step over sequences 0, 2, 4, …
or 7, 6, 5, … runs one pass per sequence: measured on the 2-core dev box with SmolLM2, 8
sequences decoded in 44 ms a step as 0-7 ascending, 163 ms descending and 180 ms as 0, 2, …, 14.
In a room the answers running at one moment are a scattered subset of the cached sessions, so
this is the common case, not the corner.

The engine therefore hands out *sequence numbers* (the `seq` of the Engine protocol) and keeps
them on KV *streams* (llama.cpp's sequence ids) through this map. Before a step whose streams
are not one ascending run, it moves caches (a copy to host memory and back, the parking path, a
few ms per thousand tokens) so the step's sequences occupy consecutive streams, and it orders the
batch by stream.
"""

from __future__ import annotations


class StreamMap:
    """A permutation between sequence numbers and KV streams, both 0..n-1."""

    def __init__(self, n: int) -> None:
        self.stream_of = list(range(n))  # seq -> stream
        self.seq_at = list(range(n))  # stream -> seq

    def stream(self, seq: int) -> int:
        return self.stream_of[seq]

    def lowest(self, seqs: set[int]) -> int:
        """The sequence among `seqs` on the lowest stream: new sequences fill streams from 0,
        which keeps the busy ones close together."""
        return min(seqs, key=self.stream_of.__getitem__)

    def swap(self, a: int, b: int) -> None:
        sa, sb = self.stream_of[a], self.stream_of[b]
        self.stream_of[a], self.stream_of[b] = sb, sa
        self.seq_at[sa], self.seq_at[sb] = b, a

    def moves_to_pack(self, seqs: list[int]) -> list[tuple[int, int]]:
        """Swaps (sequence in the step, sequence it trades streams with) that put `seqs` on
        consecutive streams, fewest first: the window of len(seqs) streams that already holds
        most of them, and each one outside it traded for a stream inside it that is not one of
        them. Empty when they already are consecutive."""
        k = len(seqs)
        streams = sorted(self.stream_of[q] for q in seqs)
        if k <= 1 or streams[-1] - streams[0] == k - 1:
            return []
        held = set(streams)
        n = len(self.stream_of)
        best = max(range(n - k + 1), key=lambda b: (sum(b <= s < b + k for s in held), -b))
        window = range(best, best + k)
        outside = [q for q in seqs if self.stream_of[q] not in window]
        targets = [s for s in window if s not in held]
        return [(q, self.seq_at[s]) for q, s in zip(outside, targets, strict=True)]
