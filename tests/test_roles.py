"""Roles in the service: who may do what, whose requests a caller may read, and the audit log.

The rule lives in the service, whatever a page shows: a member calling an admin method
gets ``PermissionDenied`` and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_service

from blossom_dash import BlossomService, Caller, Settings
from blossom_dash.errors import PermissionDenied
from blossom_dash.telemetry.analytics import MonitorQuery

ADMIN = Caller("ada@team.org", "s-admin", role="admin")
MEMBER = Caller("mo@team.org", "s-member", role="member")


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[BlossomService]:
    with make_service(tmp_path, admins="ada@team.org") as service:
        yield service


ADMIN_ACTIONS: dict[str, Callable[[BlossomService, Caller], Any]] = {
    "switch_backend": lambda s, c: s.switch_backend("demo", caller=c),
    "configure_cache": lambda s, c: s.configure_cache(ttl_s=10, caller=c),
    "clear_cache": lambda s, c: s.clear_cache(caller=c),
    "configure_limits": lambda s, c: s.configure_limits(per_user_rpm=1, caller=c),
    "configure_replay": lambda s, c: s.configure_replay(persistent=True, caller=c),
    "export_recordings": lambda s, c: s.export_recordings(caller=c),
    "import_recordings": lambda s, c: s.import_recordings(b"PK\x05\x06" + b"\0" * 18, caller=c),
    "clear_recordings": lambda s, c: s.clear_recordings(caller=c),
    "delete_events_older_than": lambda s, c: s.delete_events_older_than(0.0, caller=c),
    "audit_entries": lambda s, c: s.audit_entries(caller=c),
}


class TestPermissions:
    @pytest.mark.parametrize("action", list(ADMIN_ACTIONS))
    def test_a_member_is_refused_every_admin_action(self, svc: BlossomService, action: str) -> None:
        """PermissionDenied in words, and the team-wide state is unchanged."""
        before = (svc.cache_stats(), svc.rate_limits(), svc.backend_info())
        with pytest.raises(PermissionDenied) as info:
            ADMIN_ACTIONS[action](svc, MEMBER)
        assert "Only an admin" in info.value.message and "member" in info.value.message and info.value.hint
        assert (svc.cache_stats(), svc.rate_limits(), svc.backend_info()) == before

    def test_a_viewer_is_refused_too(self, svc: BlossomService) -> None:
        """A viewer is no admin either."""
        with pytest.raises(PermissionDenied):
            svc.configure_limits(global_rpm=5, caller=Caller("v@team.org", role="viewer"))

    def test_an_admin_may_and_it_is_audited(self, svc: BlossomService) -> None:
        """An admin's change applies, and the audit log says who, what, old and new."""
        svc.configure_limits(per_user_rpm=7, caller=ADMIN)
        svc.configure_cache(ttl_s=60, caller=ADMIN)
        assert svc.rate_limits()[0] == 7
        log = svc.audit_entries(caller=ADMIN)
        assert list(log["action"]) == ["configure_cache", "configure_limits"]
        limits = log[log.action == "configure_limits"].iloc[0]
        assert limits["user"] == "ada@team.org"
        assert '"per_user_rpm":100000' in limits["old"] and '"per_user_rpm":7' in limits["new"]

    def test_the_process_owner_is_an_admin(self, svc: BlossomService) -> None:
        """Code that passes no caller (scripts, the library) acts as the local owner."""
        svc.configure_limits(global_rpm=500)
        assert svc.audit_entries()["user"].tolist() == ["local"]


class TestWhoseRequests:
    def test_a_member_reads_only_their_own_requests(self, svc: BlossomService) -> None:
        """The log, its export and a request's detail hold the member's own requests only;
        the admin sees everyone's."""
        mine = svc.generate_text("member prompt", caller=MEMBER)
        theirs = svc.generate_text("admin secret prompt", caller=ADMIN)
        svc.flush_events()
        q = MonitorQuery.last(3600)
        frame, total = svc.monitor("request_log", q, caller=MEMBER)
        assert total == 1 and set(frame["user"]) == {MEMBER.user}
        exported = svc.monitor("export_log", q, "", "csv", caller=MEMBER).decode()
        assert "member prompt" in exported and "admin secret prompt" not in exported
        assert svc.monitor("request_detail", theirs.request_id, caller=MEMBER) is None
        assert svc.monitor("request_detail", mine.request_id, caller=MEMBER)["user"] == MEMBER.user
        _, everyone = svc.monitor("request_log", q, caller=ADMIN)
        assert everyone == 2

    def test_aggregates_are_the_teams(self, svc: BlossomService) -> None:
        """A member's KPIs count the whole team's requests (no prompts in them)."""
        svc.generate_text("one", caller=MEMBER)
        svc.generate_text("two", caller=ADMIN)
        svc.flush_events()
        assert svc.monitor("kpis", MonitorQuery.last(3600), caller=MEMBER)["requests"] == 2


class TestRoleFor:
    @pytest.mark.parametrize(("settings", "who", "role"), [
        ({}, "local", "admin"),
        ({"admins": "Ada@Team.org"}, "ada@team.org", "admin"),
        ({}, "anyone@example.com", "member"),
        ({"allowed_domains": "team.org"}, "mo@team.org", "member"),
        ({"allowed_domains": "team.org"}, "eve@evil.org", None),
        ({"allowed_emails": '["guest@x.org"]'}, "guest@x.org", "member"),
        ({"allowed_emails": "guest@x.org"}, "mo@team.org", None),
        ({"admins": "ada@team.org", "allowed_domains": "other.org"}, "ada@team.org", "admin"),
    ])
    def test_roles_from_settings(self, tmp_path: Path, settings: dict[str, str], who: str, role: str | None) -> None:
        """Admins by e-mail; members by the allowed e-mails or domains (everyone when none are set)."""
        with BlossomService(Settings(backend="demo", demo_latency=False, data_dir=tmp_path, **settings)) as svc:
            assert svc.role_for(who) == role


class TestBatchJobs:
    def test_members_see_their_jobs_and_admins_see_every_job(self, svc: BlossomService) -> None:
        """A member lists and cancels only their own jobs; an admin lists all and cancels any."""
        member = svc.session(MEMBER.user, "s-m", role="member")
        admin = svc.session(ADMIN.user, "s-a", role="admin")
        other = svc.session("zoe@team.org", "s-z", role="member")
        job = member.submit_batch([{"prompt": f"row {i}"} for i in range(3)], name="mine")
        assert [j.job_id for j in member.list_batches()] == [job]
        assert other.list_batches() == []
        with pytest.raises(PermissionDenied):
            other.list_batches(everyone=True)
        with pytest.raises(Exception) as info:
            other.cancel_batch(job)
        assert "job" in str(info.value).lower()
        assert [j.job_id for j in admin.list_batches(everyone=True)] == [job]
        assert admin.cancel_batch(job).job_id == job


class TestPermalinks:
    def test_owner_or_admin_deletes_a_shared_chat(self, svc: BlossomService) -> None:
        """Another member cannot delete a shared conversation; its owner can; an admin can, audited."""
        from blossom_dash import InvalidRequest

        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        member = svc.session(MEMBER.user, role="member")
        first, second = member.save_conversation(chat), member.save_conversation(chat)
        with pytest.raises(PermissionDenied):
            svc.session("zoe@team.org", role="member").delete_conversation(first.id)
        assert member.delete_conversation(first.id) is True
        with pytest.raises(InvalidRequest):
            svc.load_conversation(first.id)
        assert svc.session(ADMIN.user, role="admin").delete_conversation(second.id) is True
        assert svc.audit_entries()["action"].tolist() == ["delete_conversation"]

    def test_owner_or_admin_deletes_a_comparison(self, svc: BlossomService) -> None:
        """The same rule for a stored comparison and its vote."""
        from blossom_dash.features.compare import Panel

        panels = [Panel(position=i, model=m, text="x") for i, m in enumerate(("demo-swift", "demo-deep"))]
        member = svc.session(MEMBER.user, role="member")
        comp = member.compare_record("text", "p", panels)
        member.vote(comp.id, "tie")
        with pytest.raises(PermissionDenied):
            svc.session("zoe@team.org", role="member").delete_comparison(comp.id)
        assert member.delete_comparison(comp.id) is True


class TestKiosk:
    def test_kiosk_visitors_have_their_own_lower_limit_and_are_never_admins(self, tmp_path: Path) -> None:
        """kiosk_rpm caps each kiosk visitor below the per-user limit; a kiosk id is no admin."""
        from blossom_dash import RateLimited

        with make_service(tmp_path, kiosk_rpm=2, per_user_rpm=30) as svc:
            visitor = Caller("kiosk-0123abcd", role="admin")  # even if a role were forged
            assert not visitor.is_admin
            with pytest.raises(PermissionDenied):
                svc.configure_limits(per_user_rpm=99, caller=visitor)
            for i in range(2):
                svc.generate_text(f"kiosk {i}", caller=visitor)
            with pytest.raises(RateLimited) as info:
                svc.generate_text("kiosk 3", caller=visitor)
            assert "limit of 2 requests per minute" in info.value.message
            for i in range(3):  # a signed-in member keeps the team's limit
                svc.generate_text(f"member {i}", caller=MEMBER)
