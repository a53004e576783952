"""The execute step: every engine call of a plan, in plan order, and what came of them.

The scheduler's worker thread (edgechat.scheduler) is its only caller: the planner
(edgechat.planner) decided the plan without the engine, this runs it, and the planner folds the
`Outputs` back in. An engine error fails the request it belongs to (a batch that fails is retried
one sequence at a time), never the step, never another person's answer.
"""

from __future__ import annotations

import logging

from edgechat.engines.base import Engine
from edgechat.sequences import Feed, Outputs, Plan, Request, Slot, Status

log = logging.getLogger("edgechat.scheduler")  # the loop's own name, as before the split


def execute(engine: Engine, plan: Plan) -> Outputs:
    """Run `plan` on `engine`: parks, releases, admits, then the feeds in one batch (or in turns
    on engines without batch_prefill). A failure is its request's alone: the step goes on."""
    out = Outputs()
    for park in plan.parks:
        try:
            out.saved[park] = engine.save(park.slot.seq)
            if park.request is not None and engine.carries_sampling:  # a sliced answer goes on as it was
                out.sampling[park] = engine.take_sampling(park.slot.seq)
        except Exception as err:  # noqa: BLE001 — a cache that cannot be saved is dropped
            log.warning("could not park a cache (%s); it will be re-prefilled", _describe(err))
        engine.release(park.slot.seq)
    for slot in plan.releases:
        engine.release(slot.seq)
    planned: dict[Request, int] = {}
    saved = {park.slot: data for park, data in out.saved.items()}  # a source evicted this step
    for admit in plan.admits:
        request, slot = admit.request, admit.slot
        planned[request] = admit.keep
        try:
            if slot.seq < 0:
                slot.seq = engine.open_sequence()
            keep = admit.keep
            restore = admit.restore
            if restore is not None and not engine.restore(slot.seq, restore.data, len(restore.tokens)):
                out.restore_failed.add(request)
                keep = 0
            if admit.share is not None and not _copy(engine, slot.seq, admit.share, saved):
                keep = 0  # the newcomer prefills its whole prompt
            carried = restore.sampling if restore is not None and keep else None  # a sliced answer's
            out.kept[request] = engine.start(slot.seq, request.sampling, keep, carried)
        except Exception as err:  # noqa: BLE001 — this request fails, the step goes on
            out.failed[request] = _describe(err)
    # A request the engine kept fewer tokens for than planned is fed from there next step.
    feeds = [
        f
        for f in plan.feeds
        if f.request not in out.failed and out.kept.get(f.request, -1) == planned.get(f.request, -1)
    ]
    if feeds:
        if engine.batch_prefill:
            _run_batch(engine, feeds, out)
        else:
            _run_in_turns(engine, feeds, out)
    return out


def _copy(engine: Engine, seq: int, source: Slot, saved: dict[Slot, bytearray]) -> bool:
    """A prefix shared across conversations: the source sequence's cache, or its copy saved when it
    was parked this step (its sequence may be this very one now)."""
    if source in saved:
        return engine.restore(seq, saved[source], len(source.tokens))
    return source.seq >= 0 and engine.copy(seq, source.seq)


def _run_batch(engine: Engine, feeds: list[Feed], out: Outputs) -> None:
    try:
        tokens = engine.step([(f.request.slot.seq, f.tokens, f.sample) for f in feeds])  # type: ignore[union-attr]
        for feed, token in zip(feeds, tokens, strict=True):
            if isinstance(token, Exception):  # that sequence alone failed (one TPU of several)
                out.failed[feed.request] = _describe(token)
            else:
                out.tokens[feed.request] = token
        for feed in feeds:
            if feed.request in out.failed:
                continue
            if feed.sample and feed.request.sampling.logprobs is not None:
                found = engine.token_logprobs(feed.request.slot.seq)  # type: ignore[union-attr]
                if found is not None:
                    out.logprobs[feed.request] = found
    except Exception as err:  # noqa: BLE001 — isolate the failing sequence, serve the rest
        if len(feeds) == 1:
            out.failed[feeds[0].request] = _describe(err)
            return
        log.warning("batched step failed (%s); retrying one by one", _describe(err))
        for feed in feeds:
            _run_batch(engine, [feed], out)


def _run_in_turns(engine: Engine, feeds: list[Feed], out: Outputs) -> None:
    """Engines without batch_prefill: decode the running ones together, then each prompt."""
    decodes = [f for f in feeds if f.request.status is Status.RUNNING]
    if decodes:
        try:
            tokens = engine.decode([(f.request.slot.seq, f.tokens[0]) for f in decodes])  # type: ignore[union-attr]
            for feed, token in zip(decodes, tokens, strict=True):
                if isinstance(token, Exception):  # that sequence alone failed (one TPU of several)
                    out.failed[feed.request] = _describe(token)
                else:
                    out.tokens[feed.request] = token
        except Exception as err:  # noqa: BLE001
            if len(decodes) == 1:
                out.failed[decodes[0].request] = _describe(err)
            else:
                log.warning("batched decode failed (%s); retrying one by one", _describe(err))
                for feed in decodes:
                    _run_in_turns(engine, [feed], out)
    for feed in feeds:
        if feed.request.status is Status.PREFILL:
            try:
                token = engine.prefill(feed.request.slot.seq, feed.tokens)  # type: ignore[union-attr]
                out.tokens[feed.request] = token if feed.sample else None
            except Exception as err:  # noqa: BLE001
                out.failed[feed.request] = _describe(err)


def _describe(err: Exception) -> str:
    return f"the engine failed on this request ({type(err).__name__}: {err}); try again"
