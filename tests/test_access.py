"""Password check and per-session rate limits, on a fake clock."""

from __future__ import annotations

from edgechat.access import ClientLimits, KeyLockout, RateLimiter, password_ok


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_password_must_match_exactly() -> None:
    assert password_ok("s3cret", "s3cret")
    assert not password_ok("s3cre", "s3cret") and not password_ok("S3CRET", "s3cret") and not password_ok("", "x")
    assert password_ok("密码🔑", "密码🔑")  # non-ASCII passwords work (compare_digest needs bytes)


def test_rate_limit_allows_n_a_minute_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    for _ in range(3):  # at 1000, 1010, 1020
        assert limiter.hit() == 0
        clock.now += 10
    assert limiter.hit() == 30  # at 1030: the first of the three leaves the window at 1060
    clock.now += 29.5
    assert limiter.hit() == 1
    clock.now += 0.5
    assert limiter.hit() == 0 and limiter.hit() == 10  # the one at 1010 leaves at 1070


def test_refused_attempts_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    assert limiter.hit() == 0
    for _ in range(10):
        clock.now += 5
        limiter.hit()
    clock.now = 1060.0
    assert limiter.hit() == 0


def test_zero_means_no_limit() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.hit() == 0 for _ in range(1000))


def test_wrong_keys_spend_the_password_tries_then_lock_the_address_out() -> None:
    clock = Clock()
    limits = ClientLimits(rate_limit=0, max_in_flight=4, password_tries=2, clock=clock)
    lockout = KeyLockout(limits, clock=clock)
    assert [lockout.wrong_key("a"), lockout.wrong_key("a")] == [0, 0] and lockout.wait("a") == 0
    assert lockout.wrong_key("a") == 60 and lockout.wait("a") == 60  # locked: the right key waits too
    assert lockout.wait("b") == 0  # another address is not
    clock.now += 59.5
    assert lockout.wait("a") == 1
    clock.now += 0.5
    assert lockout.wait("a") == 0


def test_forwarded_for_is_believed_from_the_named_proxy_only() -> None:
    from edgechat.access import client_address

    headers = {"x-forwarded-for": "6.6.6.6, 10.0.0.7"}
    assert client_address("127.0.0.1", headers, None) == "127.0.0.1"  # loopback is no proxy unless named
    assert client_address("10.0.0.9", headers, "10.0.0.1") == "10.0.0.9"
    assert client_address("10.0.0.1", headers, "10.0.0.1") == "10.0.0.7"  # the proxy's own entry only
    assert client_address("::1", headers, "127.0.0.1") == "10.0.0.7"  # a loopback proxy: this machine
    assert client_address(None, {}, None) == "unknown"
