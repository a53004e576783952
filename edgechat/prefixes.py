"""Prompt prefixes shared across conversations: which cache holds which prefix, found without a scan.

In a room everyone's prompt starts with the same long text (the operator's system prompt, a
handout, an API caller's instructions). A newcomer's sequence starts from a *copy* of the longest
prefix any cache holds (another conversation's sequence, running or idle, a parked record, or the
room's pinned prefix) and prefills only the rest. Ownership is by copy: the newcomer's later turns
change its own sequence, never the source.

The lookup is vLLM's automatic prefix caching in miniature: a cache's tokens are cut into blocks of
`BLOCK` tokens and each full block is keyed by a hash of (parent block's key, its tokens), so a
prompt's keys are computed once (O(prompt / BLOCK)) and each is one dict probe, however many caches
there are. A key names the caches whose first blocks are exactly those tokens (hash collisions
aside: the caller checks the real tokens of the one it picks). Only the scheduler's worker thread
uses these objects.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

BLOCK = 16  # tokens per indexed block: a prefix is found to the last whole block, then extended
MIN_SHARED_TOKENS = 48  # a shorter common prefix is prefilled: a copy costs more than it saves
PIN_PREFIX = "\x00pin:"  # cache keys of the room's pinned prefixes (never a chat's id)


def block_keys(tokens: Sequence[int], start: int = 0, parent: int = 0) -> Iterator[int]:
    """The chained keys of `tokens`' whole blocks from block `start` (whose parent key is `parent`)."""
    for end in range((start + 1) * BLOCK, len(tokens) + 1, BLOCK):
        parent = hash((parent, tuple(tokens[end - BLOCK : end])))
        yield parent


class PrefixIndex:
    """Block key -> the caches (any hashable owner) whose tokens start with those blocks."""

    def __init__(self) -> None:
        self._holders: dict[int, dict[Hashable, None]] = {}
        self._chains: dict[Hashable, list[int]] = {}  # owner -> its block keys, in order

    def __len__(self) -> int:
        return len(self._chains)

    def __contains__(self, owner: object) -> bool:
        return owner in self._chains

    def put(self, owner: Hashable, tokens: Sequence[int]) -> None:
        """Index `owner`'s whole blocks of `tokens`; blocks already indexed are taken as unchanged
        (a cache only grows, or is `cut` first), so a step costs only its new blocks."""
        chain = self._chains.setdefault(owner, [])
        parent = chain[-1] if chain else 0
        for key in block_keys(tokens, len(chain), parent):
            chain.append(key)
            self._holders.setdefault(key, {})[owner] = None

    def cut(self, owner: Hashable, tokens: int) -> None:
        """`owner` now holds only its first `tokens` tokens."""
        chain = self._chains.get(owner)
        if chain is None:
            return
        keep = tokens // BLOCK
        for key in chain[keep:]:
            self._unhold(key, owner)
        del chain[keep:]

    def remove(self, owner: Hashable) -> None:
        self.cut(owner, 0)
        self._chains.pop(owner, None)

    def holders(self, tokens: Sequence[int]) -> Iterator[tuple[int, list[Hashable]]]:
        """(prefix length in whole blocks' tokens, the owners holding it), longest first, for the
        prefixes of `tokens` that some cache holds."""
        found: list[dict[Hashable, None]] = []
        for key in block_keys(tokens):
            owners = self._holders.get(key)
            if not owners:
                break
            found.append(owners)
        for depth in range(len(found), 0, -1):
            yield depth * BLOCK, list(reversed(found[depth - 1]))  # the newest holder first

    def _unhold(self, key: int, owner: Hashable) -> None:
        owners = self._holders.get(key)
        if owners is not None:
            owners.pop(owner, None)
            if not owners:
                del self._holders[key]


def pin_key(n: int) -> str:
    return f"{PIN_PREFIX}{n}"


def is_pin(cache_key: str | None) -> bool:
    return cache_key is not None and cache_key.startswith(PIN_PREFIX)
