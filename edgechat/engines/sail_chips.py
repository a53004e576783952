"""Every chip of the box: `--dev_ids 0 1 2` with a single-TPU (`_1dev`) bmodel loads one SailEngine
per TPU (its own sail.Handle, the bmodel's weights on that chip, its own KV slots) and presents
their sequences as ONE engine.

Why one engine and not one scheduler per chip: the scheduler, the planner and the room (sessions,
parking, fairness, the queue) and everything above them stay as they are, one queue for the whole box, so
a person waits for the first free slot on any chip instead of behind one chip's queue. A
sequence id names a chip's slot; a session's idle sequence (history K/V bmodels) is reused by the
room, so the session stays on the chip that holds its cache, and a new sequence goes to the
least loaded chip. It is a `batch_prefill` engine: in each scheduler step every chip decodes its
answers and reads its new prompts, the chips at the same time (one worker thread per chip, each
chip touched by one thread at a time), so one chip's prefill does not hold up the others.

A chip that fails to load, or stops answering mid-answer, is taken out with one log line: its
answers fail (step/decode return their errors, the others' tokens stand), new sequences go to the
chips left, and an idle cache on it is re-read on a chip in service at its session's next turn.
A failed graph is read as a dead chip when the chip no longer answers `get_dev_stat`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgechat.engines.sail import DEFAULT_PROMPT_SHARE, SailEngine, load_sail
from edgechat.engines.sail_api import ChipError, check_dev_ids, first_line, import_sail
from edgechat.errors import ConfigError
from edgechat.stats import ChipLoad, EngineTimings
from edgechat.types import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Chip:
    """One TPU of --dev_ids: its engine, the sequences it has open, and why it is out (if it is)."""

    dev_id: int
    engine: SailEngine | None
    handle: Any = None
    problem: str | None = None
    busy: set[int] = field(default_factory=set)  # the engine's own sequence ids in use

    @property
    def alive(self) -> bool:
        return self.engine is not None and self.problem is None

    @property
    def slots(self) -> int:
        return self.engine.max_sequences if self.engine is not None else 0


def load_engines(
    bmodel: Path,
    vocab_size: int,
    dev_ids: Sequence[int],
    slots: int,
    max_prompt_share: float = DEFAULT_PROMPT_SHARE,
) -> tuple[Any, Any]:
    """(handle, engine) for --dev_ids: a SailEngine for one id, a ChipsEngine over `slots` KV slots
    per chip for several. A chip that cannot load the bmodel is left out (one log line); a bmodel
    or a setting that no chip can serve (its protocol, too little memory) is one ConfigError."""
    if len(dev_ids) == 1:
        return load_sail(bmodel, vocab_size, dev_ids, slots, max_prompt_share)
    sail = import_sail()
    check_dev_ids(sail, dev_ids)
    if len(set(dev_ids)) != len(dev_ids):
        raise ConfigError(f"--dev_ids {' '.join(map(str, dev_ids))} names a TPU twice")
    chips: list[Chip] = []
    try:
        for dev in dev_ids:
            try:
                handle, engine = load_sail(bmodel, vocab_size, [dev], slots, max_prompt_share)
                chips.append(Chip(dev, engine, handle))
            except ChipError as err:
                chips.append(Chip(dev, None, problem=str(err)))
    except ConfigError:
        for chip in chips:
            if chip.engine is not None:
                chip.engine.close()
        raise
    if not any(chip.alive for chip in chips):
        # No chip loads it alone: a multi-TPU (_2dev) bmodel says so when loaded across them all.
        try:
            load_sail(bmodel, vocab_size, dev_ids, slots, max_prompt_share)[1].close()
        except ChipError:
            pass
        raise ConfigError(f"no TPU of --dev_ids could load {bmodel.name}: " + "; ".join(c.problem or "" for c in chips))
    for chip in chips:
        if not chip.alive:
            log.error("TPU %d left out: %s", chip.dev_id, chip.problem)
    engine = ChipsEngine(sail, chips)
    return engine.handle, engine


class ChipsEngine:
    """The Engine contract (edgechat.engines.base) over one SailEngine per TPU."""

    name = "sail"
    prefill_chunk = None
    batch_prefill = True  # step(): every chip's prompts and decodes of a step, the chips at the same time
    logprobs = False
    grammar = False
    carries_sampling = True  # each chip's engine does

    def __init__(self, sail: Any, chips: list[Chip]) -> None:
        self._sail = sail
        self.chips = chips
        live = [c for c in chips if c.alive]
        first = live[0].engine
        assert first is not None
        self.handle = live[0].handle
        self.model_path, self.vocab_size, self.max_len = first.model_path, first.vocab_size, first.max_len
        self.max_prompt_len, self.prefix_cache = first.max_prompt_len, first.prefix_cache
        self.kv_bytes_per_token = first.kv_bytes_per_token
        # An open sequence id -> (chip, that engine's sequence): placed when opened, and placed again
        # on a chip still in service when its chip goes out while it holds an idle cache.
        self._where: dict[int, tuple[Chip, int]] = {}
        self.max_sequences = sum(c.slots for c in live)
        self.max_batch = sum(c.engine.max_batch for c in live if c.engine is not None)
        self._pool = ThreadPoolExecutor(max_workers=len(live), thread_name_prefix="edgechat-tpu")
        self._fresh: set[int] = set()  # started sequences whose next feed is their prompt

    # ---- the Engine contract ----

    def open_sequence(self) -> int:
        """A slot on the least loaded chip that is still in service."""
        free = [c for c in self.chips if c.alive and len(c.busy) < c.slots]
        if not free:
            out = [c.dev_id for c in self.chips if not c.alive]
            gone = f"TPU {' '.join(map(str, out))} out of service; " if out else ""
            raise RuntimeError(f"{gone}all {self.max_sequences} TPU KV slots are in use (--max-running per TPU)")
        seq = min(set(range(self.max_sequences)) - set(self._where))
        self._where[seq] = self._place(free)
        return seq

    @property
    def live_sequences(self) -> int:
        """Slots on the chips still in service (the scheduler admits no more answers than this)."""
        return sum(c.slots for c in self.chips if c.alive)

    def _place(self, free: list[Chip]) -> tuple[Chip, int]:
        chip = min(free, key=lambda c: len(c.busy))
        local = self._call(chip, chip.engine.open_sequence)  # type: ignore[union-attr]
        chip.busy.add(local)
        return chip, local

    def start(self, seq: int, sampling: SamplingParams, keep: int, carried: Any = None) -> int:
        """A sequence whose chip went out while it was idle moves to a chip in service, its cache
        lost: 0 kept, the whole prompt is read again (and a carried sampling state with it)."""
        chip, local = self._where[seq]
        if not chip.alive:
            free = [c for c in self.chips if c.alive and len(c.busy) < c.slots]
            if not free:
                raise RuntimeError(f"TPU {chip.dev_id} is out of service and the other TPUs' KV slots are in use")
            chip.busy.discard(local)
            self._where[seq] = chip, local = self._place(free)
            keep, carried = 0, None
        kept = self._call(chip, lambda: chip.engine.start(local, sampling, keep, carried))  # type: ignore[union-attr]
        self._fresh.add(seq)
        return kept

    def take_sampling(self, seq: int) -> Any:
        chip, local = self._where[seq]
        return chip.engine.take_sampling(local) if chip.engine is not None else None  # type: ignore[union-attr]

    def step(self, feeds: Sequence[tuple[int, Sequence[int], bool]]) -> list[int | None | Exception]:
        """A scheduler step: each chip decodes its running sequences in one call and then reads its
        new prompts, the chips at the same time, so a prompt on one chip does not hold up the
        others. An entry fails alone (its error in its place); the others' tokens stand."""
        groups: dict[int, list[int]] = {}
        for i, (seq, _, _) in enumerate(feeds):
            groups.setdefault(self._where[seq][0].dev_id, []).append(i)
        prompts = {i for i, (seq, _, _) in enumerate(feeds) if seq in self._fresh}
        self._fresh -= {feeds[i][0] for i in prompts}

        def run(indices: list[int]) -> dict[int, int | Exception]:
            out: dict[int, int | Exception] = {}
            decodes = [i for i in indices if i not in prompts]
            if decodes:
                tokens = ChipsEngine.decode(self, [(feeds[i][0], feeds[i][1][0]) for i in decodes])
                out.update(zip(decodes, tokens, strict=True))
            for i in indices:
                if i in prompts:
                    try:
                        out[i] = ChipsEngine.prefill(self, feeds[i][0], feeds[i][1])
                    except Exception as err:  # noqa: BLE001 — this request fails, the chip goes on
                        out[i] = err
            return out

        results: dict[int, int | Exception] = {}
        futures = [self._pool.submit(run, indices) for indices in groups.values()]
        for future in futures:
            results.update(future.result())
        return [r if isinstance(r, Exception) or feeds[i][2] else None for i, r in sorted(results.items())]

    def prefill(self, seq: int, tokens: Sequence[int]) -> int:
        chip, local = self._live(seq)
        return self._call(chip, lambda: chip.engine.prefill(local, tokens))  # type: ignore[union-attr]

    def decode(self, batch: Sequence[tuple[int, int]]) -> list[int | Exception]:
        """Each chip decodes its own sequences, the chips at the same time. A chip's failure is
        the result of its entries only (Engine.decode's contract): the other chips' tokens stand."""
        groups: dict[int, list[int]] = {}
        for i, (seq, _) in enumerate(batch):
            groups.setdefault(self._where[seq][0].dev_id, []).append(i)
        results: list[int | Exception] = [RuntimeError("not decoded")] * len(batch)
        on_pool = threading.current_thread().name.startswith("edgechat-tpu")  # from step(): one chip

        def run(indices: list[int]) -> list[int]:
            chip = self._where[batch[indices[0]][0]][0]
            pairs = [(self._where[batch[i][0]][1], batch[i][1]) for i in indices]
            self._live(batch[indices[0]][0])
            return self._call(chip, lambda: chip.engine.decode(pairs))  # type: ignore[union-attr]

        if len(groups) == 1 or on_pool:
            futures = {dev: None for dev in groups}
        else:
            futures = {dev: self._pool.submit(run, indices) for dev, indices in groups.items()}
        for dev, indices in groups.items():
            future = futures[dev]
            try:
                tokens = run(indices) if future is None else future.result()
            except Exception as err:  # noqa: BLE001 — this chip's answers fail, the others' stand
                tokens = [err] * len(indices)
            for i, token in zip(indices, tokens, strict=True):
                results[i] = token
        return results

    def save(self, seq: int) -> bytearray:
        chip, local = self._live(seq)
        return self._call(chip, lambda: chip.engine.save(local))  # type: ignore[union-attr]

    def restore(self, seq: int, data: bytearray, tokens: int) -> bool:
        chip, local = self._where[seq]
        if not chip.alive:
            return False
        return self._call(chip, lambda: chip.engine.restore(local, data, tokens))  # type: ignore[union-attr]

    def copy(self, seq: int, source: int) -> bool:
        """A shared prompt prefix: `source`'s cache (on its chip) into `seq` (on its own, maybe another)."""
        (src, src_local), (dst, dst_local) = self._where[source], self._where[seq]
        if not (src.alive and dst.alive and self.prefix_cache):
            return False
        tokens = src.engine.cached_tokens(src_local)  # type: ignore[union-attr]
        data = self._call(src, lambda: src.engine.save(src_local))  # type: ignore[union-attr]
        return self._call(dst, lambda: dst.engine.restore(dst_local, data, tokens))  # type: ignore[union-attr]

    def cached_tokens(self, seq: int) -> int:
        chip, local = self._where[seq]
        return chip.engine.cached_tokens(local) if chip.alive else 0  # type: ignore[union-attr]

    def release(self, seq: int) -> None:
        """Host bookkeeping only (no graph runs), so a dead chip's sequences are freed too."""
        chip, local = self._where.pop(seq)
        chip.busy.discard(local)
        self._fresh.discard(seq)
        if chip.engine is not None:
            chip.engine.release(local)

    def chip_load(self) -> tuple[ChipLoad, ...]:
        """Per TPU: in service or why not, sequences in use, KV slots (the server panel, /metrics)."""
        return tuple(ChipLoad(c.dev_id, c.alive, len(c.busy), c.slots, c.problem) for c in self.chips)

    def timings(self) -> EngineTimings | None:
        return None

    def describe(self) -> dict[str, Any]:
        live = [c for c in self.chips if c.alive]
        first = live[0].engine if live else next(c.engine for c in self.chips if c.engine is not None)
        assert first is not None
        info = first.describe()
        ids = [c.dev_id for c in self.chips]
        info["device"] = info["device"].replace(f"TPU {list(first.dev_ids)}", f"TPU {ids} (one engine each)")
        info["kv_slots"] = self.max_sequences
        info["tpus"] = ids
        info["tpus_out"] = [c.dev_id for c in self.chips if not c.alive]
        return info

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for chip in self.chips:
            if chip.engine is not None:
                chip.engine.close()
                chip.engine = None

    # ---- chips in and out of service ----

    def _live(self, seq: int) -> tuple[Chip, int]:
        if seq not in self._where:
            raise RuntimeError(f"no open sequence {seq}")
        chip, local = self._where[seq]
        if not chip.alive:
            raise RuntimeError(f"TPU {chip.dev_id} is out of service ({chip.problem})")
        return chip, local

    def _call(self, chip: Chip, call: Callable[[], T]) -> T:
        """Run one chip's engine call; an error from sail (not the engine's own request errors)
        after which the chip no longer answers takes the chip out."""
        try:
            return call()
        except (RuntimeError, ConfigError):
            raise
        except Exception as err:
            if not self._answers(chip.dev_id):
                self._take_out(chip, first_line(err))
            raise

    def _answers(self, dev_id: int) -> bool:
        """Whether the TPU still answers a status query; a sail without one cannot tell, and a
        graph that failed there is read as the chip failing."""
        get_dev_stat = getattr(self._sail, "get_dev_stat", None)
        if get_dev_stat is None:
            return False
        try:
            get_dev_stat(dev_id)
        except Exception:  # noqa: BLE001 — no answer is the answer
            return False
        return True

    def _take_out(self, chip: Chip, why: str) -> None:
        if chip.problem is not None:
            return
        chip.problem = f"stopped answering: {why}"
        others = " ".join(str(c.dev_id) for c in self.chips if c.alive) or "none"
        log.error("TPU %d is out: %s; its %d answers fail, TPUs %s go on", chip.dev_id, why, len(chip.busy), others)
