"""The Election shell's own duties, beyond what every backend must do."""

from __future__ import annotations

from pathlib import Path

import pytest

from podkit.backends.leases import Grant
from podkit.backends.sqlite_leases import SQLiteLeaseBackend
from podkit.election import Election
from podkit.errors import UsageError


class BrokenRenewal(SQLiteLeaseBackend):
    """A SQLite backend whose renewal has a bug (raises something no backend should)."""

    async def renew(self, grant: Grant, *, ttl: float) -> bool:
        raise RuntimeError("bug in renew")


async def test_a_crashed_renewal_sets_lost_releases_the_lease_and_surfaces(
    tmp_path: Path,
) -> None:
    async with BrokenRenewal(tmp_path / "leases.db") as backend:
        election = Election(backend, "job", identity="alpha", ttl=0.6)
        reasons: list[str | None] = []

        async def lead() -> None:
            async with election.leadership() as term:
                await term.wait_lost()
                reasons.append(term.lost_reason)

        with pytest.raises(RuntimeError, match="bug in renew"):
            await lead()
        assert reasons
        assert "bug in renew" in str(reasons[0])
        assert await backend.leader("job") is None


async def test_campaigning_twice_at_once_is_refused(tmp_path: Path) -> None:
    async with SQLiteLeaseBackend(tmp_path / "leases.db") as backend:
        election = Election(backend, "job", identity="alpha", ttl=1.0)
        async with election.leadership():
            second = election.leadership()
            with pytest.raises(UsageError):
                await second.__aenter__()


async def test_resign_outside_a_term_does_nothing(tmp_path: Path) -> None:
    async with SQLiteLeaseBackend(tmp_path / "leases.db") as backend:
        election = Election(backend, "job", identity="alpha", ttl=1.0)
        await election.resign()
        assert election.statistics().role == "follower"
