"""The API's routes in-process for the tests/test_api_*.py files: `Api`, a Starlette TestClient on
`api_routes` over a runtime with its own metrics registry; the `api` fixture (one on the session's
real runtime, --max-new-tokens 64); `error_of`, which checks OpenAI's error shape. A test file
imports `api_fixture` and asks for `api` (imported under the parameter's own name, the fixture
would read to ruff as a redefined import)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from edgechat import metrics as metrics_module
from edgechat.access import ClientLimits
from edgechat.api import api_routes
from edgechat.config import parse_settings
from edgechat.metrics import ServingMetrics
from edgechat.runtime import Runtime

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
JSON = {"Content-Type": "application/json"}


class Api:
    """A TestClient on the API routes over `rt`, with its own metrics registry."""

    def __init__(self, rt: Runtime, *flags: str) -> None:
        self.rt = rt
        self.settings = parse_settings(list(flags), env={})
        self.metrics = ServingMetrics()
        self.limits = ClientLimits(self.settings.rate_limit, self.settings.max_in_flight)  # the defaults, fresh
        routes = api_routes(self.settings, runtime=lambda: rt, current=lambda: rt, metrics=self.metrics,
                            limits=self.limits)  # fmt: skip
        app = Starlette(routes=routes)
        self.http = TestClient(app)
        metrics_module.attach(self.metrics)

    def close(self) -> None:
        metrics_module.detach(self.metrics)
        self.http.close()

    def chat(self, headers: dict[str, str] | None = None, **body: Any) -> Any:
        return self.http.post("/v1/chat/completions", json=body, headers=headers)

    def stream(self, **body: Any) -> list[dict[str, Any]]:
        """The data of each SSE event, up to and without [DONE] (which must come)."""
        events = []
        with self.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    if line == "data: [DONE]":
                        return events
                    events.append(json.loads(line[6:]))
        raise AssertionError(f"no [DONE] after {events[-3:]}")

    def sample(self, name: str, **labels: str) -> float:
        text = self.http.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError(name)


@pytest.fixture(name="api")
def api_fixture(runtime: Runtime) -> Iterator[Api]:
    a = Api(runtime, "--max-new-tokens", "64")
    yield a
    a.close()


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]
