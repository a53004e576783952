"""What an operator reads from the API in-process (tests/api_fixtures.py) over the real embedded
model: the counters /metrics shows for API answers, where the engine thread spends its time, and
/healthz."""

from __future__ import annotations

from edgechat.runtime import Runtime
from tests.api_fixtures import (
    STORY,
    Api,
    api_fixture,  # noqa: F401 — the `api` fixture
)


def test_answers_are_counted_in_metrics_as_api(api: Api) -> None:
    before = api.sample("edgechat:requests_total", finished_reason="length", source="api")
    tokens = api.sample("edgechat:generation_tokens_total", source="api")
    assert api.chat(messages=STORY, temperature=0, max_tokens=5).status_code == 200
    assert api.sample("edgechat:requests_total", finished_reason="length", source="api") == before + 1
    assert api.sample("edgechat:generation_tokens_total", source="api") == tokens + 5
    assert api.sample("edgechat:time_to_first_token_seconds_count", source="api") >= 1
    assert api.sample("edgechat:num_requests_running") == 0
    response = api.http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain") and "What is" not in response.text


def test_metrics_say_where_the_engine_thread_spends_its_time(api: Api) -> None:
    """An operator profiling the box reads the split from /metrics: a step's wall time holds the
    llama_decode, sampling and cache-move seconds, and an answer adds steps and decode time."""
    names = ("scheduler_steps", "scheduler_step_seconds", "engine_decode_seconds", "engine_sampling_seconds")
    before = {n: api.sample(f"edgechat:{n}_total") for n in names}
    assert api.chat(messages=STORY, temperature=0, max_tokens=5).status_code == 200
    after = {n: api.sample(f"edgechat:{n}_total") for n in names}
    assert after["scheduler_steps"] >= before["scheduler_steps"] + 5
    assert after["engine_decode_seconds"] > before["engine_decode_seconds"]
    parts = sum(api.sample(f"edgechat:{n}_total") for n in ("engine_decode_seconds", "engine_sampling_seconds"))
    assert parts + api.sample("edgechat:engine_cache_move_seconds_total") <= after["scheduler_step_seconds"]


def test_healthz_names_backend_and_model(api: Api, runtime: Runtime) -> None:
    r = api.http.get("/healthz")
    assert r.status_code == 200
    expected = {
        "alive": True,
        "backend": "llamacpp",
        "model": runtime.info["model_name"],
        "loaded_at": runtime.loaded_at,
    }
    assert r.json() == expected
