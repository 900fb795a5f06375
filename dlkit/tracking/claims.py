"""Claims: each member of a comparison finishes once, however many processes run it.

A member is claimed by opening its child run (RUNNING, tagged with its config
hash, host and pid) before it trains. Right after opening, a process looks at
the parent's other runs of the same config: one that FINISHED, or one that is
RUNNING in a live process and was opened first, holds the member, and this
process withdraws its own run (deletes it) and leaves the member to that one.
Two processes that open runs in the same instant could both miss the other's
uncommitted run, so the check is made again before a member is marked
FINISHED: a member that already FINISHED elsewhere withdraws.

"Opened first" cannot be read off the runs' `start_time` alone: MLflow's
client reads it before the store commits the run, so a claim whose create
waited on the store's lock can commit, with the earlier `start_time`, after
the other process's check. So a live claim opened *after* mine still holds
the member once it has decided to keep it (it has logged its params): it
checked before mine was there to see. Until it has decided (or withdrawn, or
its process died), this process waits for it. Waits run from earlier claims
to later ones only, so two processes never wait on each other.

A claim whose process is gone is no claim (`Tracker.close_orphans` ends it
KILLED).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dlkit import keys
from dlkit.tracking.members import member_key, members
from dlkit.tracking.tracker import RunRecord, Tracker, process_alive


class ClaimedElsewhere(Exception):
    """A member another run holds: it trains (or trained) in another process."""

    def __init__(self, rival: RunRecord):
        host, pid = rival.tags.get(keys.HOST, "?"), rival.tags.get(keys.PID, "?")
        where = "finished" if rival.status == "FINISHED" else f"training in pid {pid} on {host}"
        super().__init__(f"claimed by run {rival.run_id} ({where})")
        self.rival = rival


def rival(mine: RunRecord, others: Sequence[RunRecord], *, running: bool) -> RunRecord | None:
    """The run that holds `mine`'s member instead of it, if any: one that FINISHED, or
    (with `running`) one RUNNING in a live process that was opened before it, or opened
    after it and has decided to keep the member (it logged its params without seeing it)."""
    for other in others:
        if not _same_member(mine, other):
            continue
        if other.status == "FINISHED":
            return other
        if running and _live(other) and (_opened_before(other, mine) or other.params):
            return other
    return None


def undecided(mine: RunRecord, others: Sequence[RunRecord]) -> list[RunRecord]:
    """The live claims of `mine`'s member opened after it that have not yet decided whether
    they keep it: one that checked before `mine` was in the store would keep it."""
    return [
        other
        for other in others
        if _same_member(mine, other)
        and _live(other)
        and not _opened_before(other, mine)
        and not other.params
    ]


def _same_member(mine: RunRecord, other: RunRecord) -> bool:
    return other.run_id != mine.run_id and member_key(other.tags) == member_key(mine.tags)


def _live(run: RunRecord) -> bool:
    return run.status == "RUNNING" and process_alive(run.tags)


def _opened_before(run: RunRecord, mine: RunRecord) -> bool:
    return (run.start_time, run.run_id) < (mine.start_time, mine.run_id)


def contested(
    tracker: Tracker,
    parent_id: str | None,
    claims: dict[str, str | None],
    *,
    running: bool,
    role: str | None = None,
) -> dict[str, ClaimedElsewhere]:
    """Withdraws those of the runs claimed (`claims`: each run id's config hash) whose member
    another run holds; returns them, each with why. Runs without a parent or config hash (not
    a comparison's) are never contested. Each look reads only the runs of the members claimed,
    not the whole comparison, and `role`, when every claimed run has it, narrows it further.
    With `running` (before training), waits for the later claims that have not decided yet
    (see the module's docstring)."""
    pending = {run_id: config for run_id, config in claims.items() if config}
    if not parent_id or not pending:
        return {}
    lost: dict[str, ClaimedElsewhere] = {}
    while True:
        runs = _member_runs(tracker, parent_id, set(pending.values()), role)
        for run in [run for run in runs if run.run_id in pending]:
            if (other := rival(run, runs, running=running)) is not None:
                tracker.withdraw(run.run_id)
                lost[run.run_id] = ClaimedElsewhere(other)
                del pending[run.run_id]
            elif not running or not undecided(run, runs):
                del pending[run.run_id]
        seen = {run.run_id for run in runs}  # a run no longer there is not contested
        pending = {run_id: config for run_id, config in pending.items() if run_id in seen}
        if not pending:
            return lost
        time.sleep(_DECIDING_POLL)


def _member_runs(
    tracker: Tracker, parent_id: str, configs: set[str], role: str | None
) -> list[RunRecord]:
    """The comparison's runs of these config hashes (of `role`, when given). Every claim
    carries the comparison's tag, so the runs logged before dlkit wrote it are not read."""
    role_tag = {keys.ROLE: role} if role else {}
    return [
        run
        for config in sorted(configs)
        for run in tracker.children(
            parent_id, tags={**role_tag, keys.CONFIG_HASH: config}, untagged=False
        )
    ]


_DECIDING_POLL = 0.05  # seconds between looks while a later claim decides


def holders(tracker: Tracker, parent_id: str) -> dict[tuple[str, str], str]:
    """How each member of the parent stands, by (role, config hash): `FINISHED`, `FAILED`
    (it diverged: training it again would too) or `LIVE` (RUNNING in a live process), as
    `dlkit.tracking.members` rules. Others are free."""
    return {
        key: held.state
        for key, held in members(tracker, parent_id).items()
        if held.state in ("FINISHED", "FAILED", "LIVE")
    }
