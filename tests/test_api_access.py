"""Who may use the API, in-process (tests/api_fixtures.py) over the real embedded model: the server
key and the page password as bearers, the wrong-key lockout shared with the page's form, and the
per-address limits (questions a minute, answers in flight) that a keyed program is spared."""

from __future__ import annotations

from edgechat.runtime import Runtime
from tests.api_fixtures import (
    QUESTION,
    Api,
    api_fixture,  # noqa: F401 — the `api` fixture
    error_of,
)


def test_without_a_key_or_password_the_api_is_open(api: Api) -> None:
    assert api.http.get("/v1/models").status_code == 200


def test_a_server_key_is_required_as_bearer(runtime: Runtime) -> None:
    api = Api(runtime, "--server-api-key", "s3cret", "--password", "pagepass")
    try:
        error_of(api.http.get("/v1/models"), 401)
        r = api.http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert error_of(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        error_of(api.http.get("/v1/models", headers={"Authorization": "Bearer pagepass"}), 401)  # the key wins
        error_of(api.http.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        assert api.http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        error_of(api.chat(messages=QUESTION), 401)
        assert api.http.get("/metrics").status_code == 200 and api.http.get("/healthz").status_code == 200
    finally:
        api.close()


def test_the_page_password_is_the_bearer_when_no_key_is_set(runtime: Runtime) -> None:
    api = Api(runtime, "--password", "pagepass")
    try:
        error_of(api.http.get("/v1/models"), 401)
        assert api.http.get("/v1/models", headers={"Authorization": "Bearer pagepass"}).status_code == 200
    finally:
        api.close()


def test_wrong_keys_lock_the_address_out_like_the_password_form(runtime: Runtime) -> None:
    api = Api(runtime, "--server-api-key", "s3cret")
    wrong = {"Authorization": "Bearer guess"}
    try:
        statuses = [api.http.get("/v1/models", headers=wrong).status_code for _ in range(6)]
        assert statuses == [401] * 5 + [429]
        r = api.http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})  # even the right key, for now
        assert error_of(r, 429)["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    finally:
        api.close()


def test_password_tries_are_shared_with_the_page(runtime: Runtime) -> None:
    api = Api(runtime, "--password", "pagepass")
    try:
        for _ in range(5):  # the page's form spent this address's tries
            assert api.limits.password_try("testclient") == 0
        error_of(api.http.get("/v1/models", headers={"Authorization": "Bearer guess"}), 429)
    finally:
        api.close()


def test_questions_a_minute_per_address(runtime: Runtime) -> None:
    api = Api(runtime, "--rate-limit", "2")
    try:
        assert [api.chat(messages=QUESTION, max_tokens=1).status_code for _ in range(2)] == [200, 200]
        r = api.chat(messages=QUESTION, max_tokens=1)
        assert "--rate-limit" in error_of(r, 429)["message"] and int(r.headers["retry-after"]) >= 1
        assert api.sample("edgechat:api_errors_total", status="429") == 1
    finally:
        api.close()


def test_answers_in_flight_per_address_counting_the_page_too(runtime: Runtime) -> None:
    api = Api(runtime, "--max-in-flight", "2", "--trusted-proxy", "testclient")
    tabs = [api.limits.acquire("10.0.0.7") for _ in range(2)]  # two page tabs of that person are answering
    behind_proxy = {"X-Forwarded-For": "10.0.0.7"}
    try:
        third = api.chat(messages=QUESTION, max_tokens=1, headers=behind_proxy)
        assert "--max-in-flight" in error_of(third, 429)["message"] and third.headers["retry-after"]
        other = api.chat(messages=QUESTION, max_tokens=1, headers={"X-Forwarded-For": "10.0.0.8"})
        assert other.status_code == 200  # someone else is not held up
        spoofed = api.chat(messages=QUESTION, max_tokens=1, headers={"X-Forwarded-For": "10.0.0.8, 10.0.0.7"})
        error_of(spoofed, 429)  # only the proxy's own (last) entry counts
        tabs[0]()
        assert api.chat(messages=QUESTION, max_tokens=1, headers=behind_proxy).status_code == 200
        assert api.limits.in_flight("10.0.0.7") == 1  # the API answer gave its slot back; one tab still holds one
    finally:
        for release in tabs:
            release()
        api.close()


def test_a_program_holding_the_server_key_is_not_limited_per_address(runtime: Runtime) -> None:
    """Open WebUI or Dify send many people's requests from one address: the server key gives them
    the box's capacity. The page password as a bearer is a person's: limited as the page is."""
    for flags, keyed_status in ((("--server-api-key", "k"), 200), (("--password", "k"), 429)):
        api = Api(runtime, "--max-in-flight", "1", "--rate-limit", "1", *flags)
        held = api.limits.acquire("testclient")  # that address already has its one answer running
        try:
            r = api.chat(messages=QUESTION, max_tokens=1, headers={"Authorization": "Bearer k"})
            assert r.status_code == keyed_status, (flags, r.text)
            if keyed_status == 200:  # and again: no --rate-limit of 1 a minute either
                assert (
                    api.chat(messages=QUESTION, max_tokens=1, headers={"Authorization": "Bearer k"}).status_code == 200
                )
        finally:
            held()
            api.close()
