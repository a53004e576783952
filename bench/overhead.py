"""What client + scheduler cost per token at U sequences (issue 11 item 5), for bench/room.py's
`overhead`: U answers decoding together through the page's clients, against the fewest Python
lines that drive llama.cpp's batched decode + numpy argmax over the same prompts, on a context
built like the engine's. overhead = 1 - served / raw; bench/room.py's target is <= 5 %."""

from __future__ import annotations

import threading
import time

from edgechat.engines.llamacpp import UBATCH  # first: it sets OMP_WAIT_POLICY before llama_cpp loads

# isort: split
import llama_cpp as lc
import numpy as np

from edgechat.clients import client_for
from edgechat.config import parse_settings
from edgechat.runtime import Runtime, load_runtime
from edgechat.types import Message, SamplingParams
from harness.room import SYSTEM, question, room_runtime


def client_decode_rate(runtime: Runtime, people: int, tokens: int) -> float:
    """Tokens/s of `people` answers decoding together through the page's clients, over the window
    in which every one of them is decoding: from the last person's first text piece to the first
    person's last. The raw loop times exactly that (all sequences decoding, no prompt in the
    batch); an answer's whole span would also count the steps that prefill the others' prompts
    (the first submitter's step starts before the last one arrives)."""
    room = room_runtime(runtime)
    times: list[list[float]] = [[] for _ in range(people)]
    start = threading.Barrier(people)

    def person(i: int) -> None:
        sampling = SamplingParams(temperature=0, max_new_tokens=tokens)
        client = client_for(room, sampling=sampling, system=SYSTEM)
        start.wait(60)
        for _ in client.chat_stream(question(i, 0), []):
            times[i].append(time.perf_counter())
        room.backend.forget_cache(client.cache_key)

    threads = [threading.Thread(target=person, args=(i,)) for i in range(people)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    begin, end = max(ts[0] for ts in times), min(ts[-1] for ts in times)
    rate = 0.0
    for ts in times:
        inside = [t for t in ts if begin < t <= end]
        if len(inside) >= 2:
            rate += (len(inside) - 1) / (inside[-1] - inside[0])
    return rate


def raw_decode_rate(runtime: Runtime, people: int, tokens: int) -> float:
    """The same prompts on a context built like the engine's, driven by the fewest Python lines:
    one llama_batch of all prompts, then `tokens` steps of one batched llama_decode + numpy argmax."""
    engine = runtime.backend.scheduler.engine  # type: ignore[attr-defined]
    chat = runtime.tokenizer
    prompts = [
        chat.render([Message(role="system", content=SYSTEM), Message(role="user", content=question(i, 0))])  # type: ignore[union-attr]
        for i in range(people)
    ]
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_seq_max = engine.max_len * people, people
    params.n_batch = max(sum(map(len, prompts)), people)
    params.n_ubatch = UBATCH
    params.n_threads = params.n_threads_batch = engine.threads
    params.kv_unified, params.no_perf = False, True
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = lc.llama_init_from_model(engine.model, params)
    batch = lc.llama_batch_init(params.n_batch, 0, 1)
    try:
        n = 0
        for seq, ids in enumerate(prompts):
            for pos, token in enumerate(ids):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                batch.seq_id[n][0], batch.logits[n] = seq, pos == len(ids) - 1
                n += 1
        batch.n_tokens = n
        assert lc.llama_decode(ctx, batch) == 0
        logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(people, engine.n_vocab))
        last = logits.argmax(axis=1)
        positions = [len(ids) for ids in prompts]
        began = time.perf_counter()
        for _ in range(tokens - 1):
            for seq in range(people):
                batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = int(last[seq]), positions[seq], 1
                batch.seq_id[seq][0], batch.logits[seq] = seq, True
                positions[seq] += 1
            batch.n_tokens = people
            assert lc.llama_decode(ctx, batch) == 0
            logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(people, engine.n_vocab))
            last = logits.argmax(axis=1)
        return people * (tokens - 1) / (time.perf_counter() - began)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def overhead(people: int, tokens: int, rounds: int) -> dict:
    runtime = load_runtime(parse_settings(["--context-length", "1024", "--max-running", str(people)], env={}))
    try:
        raw, served = [], []
        for _ in range(rounds):  # interleaved, best of each: the box is shared
            raw.append(raw_decode_rate(runtime, people, tokens))
            served.append(client_decode_rate(runtime, people, tokens))
    finally:
        runtime.close()
    return {
        "sequences": people,
        "tokens": tokens,
        "raw_loop_tps": round(max(raw), 1),
        "client_scheduler_tps": round(max(served), 1),
        "overhead": round(1 - max(served) / max(raw), 4),
        "all_raw_tps": [round(x, 1) for x in raw],
        "all_client_scheduler_tps": [round(x, 1) for x in served],
    }
