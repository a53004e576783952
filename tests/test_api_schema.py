"""The OpenAI wire format without a server: what a request body becomes, which bodies are refused
with which field named, and what /metrics exports from a backend's figures."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgechat.config import Settings
from edgechat.metrics import ServingMetrics
from edgechat.openai_schema import ApiError, ChatCall, chunk, completion, parse_chat
from edgechat.stats import BackendStats, RoomStats, SchedulerStats
from edgechat.types import FinishReason, TurnStats

DEFAULTS = Settings().sampling
HI = [{"role": "user", "content": "hi"}]


def parse(**body: Any) -> ChatCall:
    return parse_chat({"messages": HI, **body}, DEFAULTS)


def refused(body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat(body, DEFAULTS)
    assert caught.value.status == 400
    return caught.value


def test_a_plain_request_takes_the_operator_defaults() -> None:
    call = parse()
    assert call.messages == HI and call.model is None and not call.stream and not call.include_usage
    s = call.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.2, 0.9, 40, 512)
    assert s.stop == () and not call.continue_last
    assert call.id.startswith("chatcmpl-") and call.id != parse().id


def test_openai_names_map_onto_sampling() -> None:
    s = parse(temperature=0, top_p=0.5, top_k=7, seed=3, stop=["END", ""], max_tokens=20,
              frequency_penalty=0.5, presence_penalty=-1, repetition_penalty=1.1).sampling  # fmt: skip
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.stop, s.max_new_tokens) == (0.0, 0.5, 7, 3, ("END",), 20)
    assert (s.frequency_penalty, s.presence_penalty, s.repetition_penalty) == (0.5, -1.0, 1.1)
    assert parse(stop="\n\n").sampling.stop == ("\n\n",)
    assert parse(top_k=-1).sampling.top_k == 0  # vLLM's "off"
    assert parse(max_completion_tokens=9, max_tokens=30).sampling.max_new_tokens == 9  # the newer name wins


def test_max_tokens_is_capped_at_the_operators_limit() -> None:
    assert parse(max_tokens=100_000).sampling.max_new_tokens == DEFAULTS.max_new_tokens


def test_without_a_seed_each_request_samples_anew() -> None:
    assert len({parse().sampling.seed for _ in range(5)}) > 1
    assert parse(seed=7).sampling.seed == parse(seed=7).sampling.seed == 7


def test_content_parts_of_text_are_joined_and_roles_are_openais() -> None:
    call = parse_chat(
        {"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "three", "name": "bob"},
        ]},
        DEFAULTS,
    )  # fmt: skip
    assert call.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "three"},
    ]


def test_unknown_fields_are_ignored_like_vllm() -> None:
    assert parse(user="x", logit_bias={}, tools=[], response_format={"type": "text"}).messages == HI


def test_stream_options_count_only_when_streaming() -> None:
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    assert not parse(stream=False, stream_options={"include_usage": True}).include_usage


def test_continue_final_message_goes_on_with_the_assistant() -> None:
    body = {"messages": [*HI, {"role": "assistant", "content": "Hel"}], "continue_final_message": True}
    assert parse_chat(body, DEFAULTS).continue_last
    assert refused({"messages": HI, "continue_final_message": True}).param == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
        ({"messages": HI, "temperature": 3}, "temperature"),
        ({"messages": HI, "temperature": "hot"}, "temperature"),
        ({"messages": HI, "temperature": True}, "temperature"),
        ({"messages": HI, "top_p": 0}, "top_p"),
        ({"messages": HI, "top_k": 1000}, "top_k"),
        ({"messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"messages": HI, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": HI, "seed": "x"}, "seed"),
        ({"messages": HI, "stop": 5}, "stop"),
        ({"messages": HI, "stop": ["x"] * 17}, "stop"),
        ({"messages": HI, "n": 2}, "n"),
        ({"messages": HI, "stream": "yes"}, "stream"),
        ({"messages": HI, "stream_options": []}, "stream_options"),
        ({"messages": HI, "frequency_penalty": 3}, "frequency_penalty"),
        ({"messages": HI, "model": 5}, "model"),
    ],
)  # fmt: skip
def test_a_bad_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    err = refused(body)
    assert err.param == param and err.message
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error", "param": param,
                                    "code": None}}  # fmt: skip


def test_a_body_that_is_not_an_object() -> None:
    assert "JSON object" in refused([1, 2]).message


def test_answer_shapes_are_openais() -> None:
    call = parse(stream=True, stream_options={"include_usage": True})
    stats = TurnStats(prompt_tokens=10, reused_tokens=4, completion_tokens=3, finish_reason=FinishReason.LENGTH)
    whole = completion(call, "m", "Hi!", stats)
    assert whole["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "logprobs": None,
                                   "finish_reason": "length"}  # fmt: skip
    assert whole["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                              "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
    piece = chunk(call, "m", {"content": "Hi"})
    assert piece["object"] == "chat.completion.chunk" and piece["usage"] is None
    last = chunk(call, "m", {}, last_usage=stats)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 13
    timeout = TurnStats(finish_reason=FinishReason.TIMEOUT)
    assert completion(call, "m", "", timeout)["choices"][0]["finish_reason"] == "length"


# ---- /metrics from a backend's figures ----


def families(metrics: ServingMetrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}


def value(metrics: ServingMetrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def test_scrape_time_gauges_follow_the_backend_and_skip_missing_records() -> None:
    remote = BackendStats(running=2, prefilling=1, waiting=3)  # a remote server: no scheduler of ours
    figures = [remote]
    m = ServingMetrics()
    m.bind(lambda: figures[0], lambda: {"backend": "llamacpp", "model_name": "M", "model": "/secret/path.gguf"},
           lambda: 4)  # fmt: skip
    assert value(m, "edgechat:num_requests_running") == 3
    assert value(m, "edgechat:num_requests_waiting") == 3
    assert value(m, "edgechat:page_sessions_open") == 4
    assert value(m, "edgechat:engine_alive") == 1
    info = families(m)["edgechat:model_info"].samples[0].labels
    assert info == {"backend": "llamacpp", "model_name": "M"}  # no path, URL or key in a label
    assert "edgechat:sessions_parked" not in families(m)  # the backend has no room of ours
    room = RoomStats(kv_tokens_used=100, kv_tokens_budget=400, sessions_parked=2, parked_mib=1.5, sessions_cached=5)
    local = SchedulerStats(refused=5, turns_restored=3, room=room)
    figures[0] = BackendStats(alive=False, running=2, prefilling=1, waiting=3, scheduler=local)
    assert value(m, "edgechat:kv_cache_usage_perc") == 0.25
    assert value(m, "edgechat:requests_refused_total") == 5
    assert value(m, "edgechat:sessions_parked") == 2 and value(m, "edgechat:engine_alive") == 0
    assert value(m, "edgechat:parked_cache_bytes") == 1.5 * 2**20  # base units, as Prometheus names want
    assert value(m, "edgechat:turns_restored_total") == 3
    assert value(m, "edgechat:sessions_cached") == 5 and len(families(m)["edgechat:sessions_cached"].samples) == 1
    assert "edgechat:engine_decode_seconds_total" not in families(m)  # this engine does not time its steps


def test_each_answer_is_counted_by_reason_and_source() -> None:
    m = ServingMetrics()
    m.observe("api", TurnStats(prompt_tokens=10, reused_tokens=2, completion_tokens=5, first_token_s=0.3,
                               queue_wait_s=0.1, finish_reason=FinishReason.STOP))  # fmt: skip
    m.observe("page", TurnStats(finish_reason=FinishReason.ERROR, error="too long"))
    m.observe("somebody", TurnStats(finish_reason=FinishReason.CANCELLED))
    assert value(m, "edgechat:requests_total", finished_reason="stop", source="api") == 1
    assert value(m, "edgechat:requests_total", finished_reason="error", source="page") == 1
    assert value(m, "edgechat:requests_total", finished_reason="cancelled", source="other") == 1
    assert value(m, "edgechat:request_errors_total", source="page") == 1
    assert value(m, "edgechat:prompt_tokens_total", source="api") == 10
    assert value(m, "edgechat:prompt_tokens_reused_total", source="api") == 2
    assert value(m, "edgechat:generation_tokens_total", source="api") == 5
    assert value(m, "edgechat:time_to_first_token_seconds_count", source="api") == 1
    assert value(m, "edgechat:request_queue_time_seconds_sum", source="api") == pytest.approx(0.1)
    assert value(m, "edgechat:request_queue_time_seconds_count", source="page") == 0  # refused: never queued
    m.api_error(429)
    assert value(m, "edgechat:api_errors_total", status="429") == 1
    assert not any(s.name.endswith("_created") for f in families(m).values() for s in f.samples)


def test_two_registries_do_not_share_series() -> None:
    a, b = ServingMetrics(), ServingMetrics()
    a.observe("api", TurnStats(finish_reason=FinishReason.STOP))
    assert value(a, "edgechat:requests_total", finished_reason="stop", source="api") == 1
    assert value(b, "edgechat:requests_total", finished_reason="stop", source="api") == 0


def test_logprobs_and_top_logprobs_as_openai_takes_them() -> None:
    assert parse().sampling.logprobs is None and parse(logprobs=False).sampling.logprobs is None
    assert parse(logprobs=True).sampling.logprobs == 0 and parse(logprobs=True, top_logprobs=20).sampling.logprobs == 20
    assert refused({"messages": HI, "logprobs": True, "top_logprobs": 21}).param == "top_logprobs"
    assert refused({"messages": HI, "top_logprobs": 2}).param == "top_logprobs"  # needs logprobs: true
    assert refused({"messages": HI, "logprobs": "yes"}).param == "logprobs"


def test_response_format_and_truncate_are_checked() -> None:
    assert parse().response_format is None and parse(response_format={"type": "text"}).response_format is None
    assert parse(response_format={"type": "json_object"}).response_format == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    call = parse(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert call.response_format == {"type": "json_schema", "schema": schema}
    assert refused({"messages": HI, "response_format": {"type": "yaml"}}).param == "response_format"
    bad = {"type": "json_schema", "json_schema": {"name": "x"}}
    assert refused({"messages": HI, "response_format": bad}).param == "response_format.json_schema.schema"
    assert not parse().truncate and parse(truncate=True).truncate
    assert refused({"messages": HI, "truncate": 1}).param == "truncate"
