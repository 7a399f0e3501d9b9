"""ui helpers that do not need a page: a member's own key is kept per identity, in server memory."""

from __future__ import annotations

from blossom_dash import BlossomService
from blossom_dash.ui import auth


class TestKeyedHandle:
    def test_key_follows_the_identity_not_the_session(self, demo_service: BlossomService) -> None:
        """A key set in one session is used by the same user's next session, and by no one else."""
        ring = auth.KeyRing()
        tab1 = auth.KeyedHandle(demo_service, ring, user="mia@team.test", session_id="s1", role="member")
        tab1.set_api_key("  sk_mine ")
        tab2 = auth.KeyedHandle(demo_service, ring, user="mia@team.test", session_id="s2", role="member")
        other = auth.KeyedHandle(demo_service, ring, user="max@team.test", session_id="s3", role="member")
        assert tab2.has_session_key and tab2.caller.api_key == "sk_mine"
        assert not other.has_session_key and other.caller.api_key is None
        assert "sk_mine" not in repr(tab2.caller)

    def test_forgetting_the_key_forgets_it_everywhere(self, demo_service: BlossomService) -> None:
        ring = auth.KeyRing()
        tab1 = auth.KeyedHandle(demo_service, ring, user="mia@team.test", session_id="s1", role="member")
        tab1.set_api_key("sk_mine")
        auth.KeyedHandle(demo_service, ring, user="mia@team.test", session_id="s2", role="member").set_api_key(None)
        assert not tab1.has_session_key
