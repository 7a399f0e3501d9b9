"""A user's batch takes at most its share of their per-user window (``Settings.batch_share``), so their
chats are still admitted while it runs: the limiter alone (in-process and on Redis), then a running job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import make_service, run_in_threads

from blossom_dash import RateLimited, Settings
from blossom_dash.policies.ratelimit import RateLimiter, batch_rpm
from blossom_dash.policies.shared_limits import SharedRateLimiter


def take(limiter: RateLimiter, user: str, *, batch: bool) -> int:
    """Acquire for ``user`` until refused; how many were admitted."""
    n = 0
    while True:
        try:
            limiter.acquire(user, batch=batch)
        except RateLimited:
            return n
        n += 1


class TestBatchRpm:
    def test_the_share_rounds_up_to_whole_requests(self) -> None:
        """ceil(share x RPM), at least 1, without binary floating-point surprises."""
        assert [batch_rpm(30, 0.5), batch_rpm(10, 0.5), batch_rpm(30, 0.1), batch_rpm(10, 0.35),
                batch_rpm(7, 0.05), batch_rpm(30, 1.0)] == [15, 5, 3, 4, 1, 30]

    @pytest.mark.parametrize("share", [0.0, 0.04, 1.01, -0.5])
    def test_a_share_outside_its_range_is_refused(self, share: float) -> None:
        """The limiter and the settings both refuse a share outside 0.05 to 1.0."""
        with pytest.raises(ValueError, match="batch_share"):
            RateLimiter(per_user_rpm=10, batch_share=share)
        with pytest.raises(ValueError, match="batch_share"):
            Settings(batch_share=share)

    def test_the_default_share_is_half(self) -> None:
        """Settings default: half of the per-user window."""
        assert Settings().batch_share == 0.5


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    """10 RPM per user, share 0.5: in this process, or on the test session's real Redis."""
    if request.param == "memory":
        return RateLimiter(per_user_rpm=10, global_rpm=100, batch_share=0.5)
    url = request.getfixturevalue("redis_url")
    return SharedRateLimiter(url, per_user_rpm=10, global_rpm=100, batch_share=0.5)


class TestLimiterShare:
    def test_a_batch_takes_at_most_its_share_and_chat_keeps_the_rest(self, limiter: RateLimiter) -> None:
        """10 RPM at 0.5: the batch gets 5 slots, then the user's chats still get the other 5."""
        assert take(limiter, "ana", batch=True) == 5
        with pytest.raises(RateLimited) as info:
            limiter.acquire("ana", batch=True)
        assert info.value.scope == "batch" and "5 of your 10 requests per minute (50%)" in info.value.message
        assert "free for your chats" in info.value.hint and info.value.retry_after_s > 0
        assert take(limiter, "ana", batch=False) == 5
        status = limiter.status("ana")
        assert status.batch is not None
        assert (status.user.used, status.batch.used, status.batch.limit, status.batch_share) == (10, 5, 5, 0.5)
        assert take(limiter, "bob", batch=True) == 5, "each user has their own batch window"

    def test_a_refused_chat_says_how_much_the_batch_took(self, limiter: RateLimiter) -> None:
        """When the window is full, the refusal says the user's batch made part of it."""
        take(limiter, "ana", batch=True)
        take(limiter, "ana", batch=False)
        with pytest.raises(RateLimited) as info:
            limiter.acquire("ana")
        assert info.value.scope == "user"
        assert info.value.message == ("You have reached the limit of 10 requests per minute. "
                                      "Your batch jobs made 5 of them.")
        take(limiter, "bob", batch=False)
        with pytest.raises(RateLimited) as other:
            limiter.acquire("bob")
        assert "batch" not in other.value.message

    def test_chat_first_leaves_the_batch_what_is_left(self, limiter: RateLimiter) -> None:
        """The share bounds the batch, not the chats: 8 chats leave the batch 2 slots of the window."""
        for _ in range(8):
            limiter.acquire("ana")
        assert take(limiter, "ana", batch=True) == 2
        assert limiter.status("ana").batch.used == 2  # type: ignore[union-attr]

    def test_exact_under_threads(self, limiter: RateLimiter) -> None:
        """24 concurrent batch rows: exactly 5 admitted, and the chat is admitted after them."""
        admitted: list[int] = []

        def row(k: int) -> None:
            try:
                limiter.acquire("ana", batch=True)
                admitted.append(k)
            except RateLimited as err:
                assert err.scope == "batch"

        assert run_in_threads(row, 24) == []
        assert len(admitted) == 5
        limiter.acquire("ana")  # not refused

    def test_a_refused_batch_row_takes_no_user_slot(self, limiter: RateLimiter) -> None:
        """A row refused by the share leaves the user's window as it was."""
        take(limiter, "ana", batch=True)
        used = limiter.status("ana").user.used
        for _ in range(3):
            with pytest.raises(RateLimited):
                limiter.acquire("ana", batch=True)
        assert limiter.status("ana").user.used == used == 5


def wait_for(check: object, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``check()`` until true; a guard against hanging, not a timing claim."""
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


class TestRunningBatch:
    def test_a_running_batch_leaves_room_for_chat(self, tmp_path: Path) -> None:
        """A 12-row job at 10 RPM and share 0.5: 5 rows run, the job waits for its share (no row fails),
        and the user's chat request is still answered."""
        with make_service(tmp_path, per_user_rpm=10, batch_share=0.5) as svc:
            job = svc.submit_batch([{"prompt": f"question {i}"} for i in range(12)], user="ana")
            wait_for(lambda: svc.batch_status(job).waiting_s > 0 and svc.batch_status(job).running == 0,
                     "the job to wait for its share")
            status = svc.batch_status(job)
            assert (status.done, status.failed, status.remaining) == (5, 0, 7)
            assert "share of your requests-per-minute limit" in status.wait_reason
            assert svc.generate_text("hello while the batch waits", user="ana").text
            limits = svc.limit_status("ana")
            assert (limits.batch.used, limits.user.used) == (5, 6)  # type: ignore[union-attr]
            svc.cancel_batch(job, user="ana")
