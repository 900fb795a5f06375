"""Claims: each member of a comparison finishes once, however many processes run it.

A member is claimed by opening its child run (RUNNING, tagged with its config
hash, host and pid) before it trains. Right after opening, a process looks at
the parent's other runs of the same config: one that FINISHED, or one that is
RUNNING in a live process and was opened first, holds the member, and this
process withdraws its own run (deletes it) and leaves the member to that one.
Two processes that open runs in the same instant could both miss the other's
uncommitted run, so the check is made again before a member is marked
FINISHED: a member that already FINISHED elsewhere withdraws.

Known race (docs/reliability.md): "opened first" is the runs' `start_time`,
which MLflow's client reads before the store commits the run. A claim whose
create waited on the store's lock can commit, with the earlier `start_time`,
after the other process's check; both then keep the member, and two that
finish together can both end FINISHED. Ordering claims by when they became
visible, not by the client's clock, is the fix still to make.

A claim whose process is gone is no claim (`Tracker.close_orphans` ends it
KILLED).
"""

from __future__ import annotations

from collections.abc import Sequence

from dlkit import keys
from dlkit.tracking.tracker import RunRecord, Tracker, process_alive


class ClaimedElsewhere(Exception):
    """A member another run holds: it trains (or trained) in another process."""

    def __init__(self, rival: RunRecord):
        host, pid = rival.tags.get(keys.HOST, "?"), rival.tags.get(keys.PID, "?")
        where = "finished" if rival.status == "FINISHED" else f"training in pid {pid} on {host}"
        super().__init__(f"claimed by run {rival.run_id} ({where})")
        self.rival = rival


def member(tags: dict[str, str]) -> tuple[str, str | None]:
    """What a run trains for its comparison: its role (a measuring child, or a tuning
    sweep's run) and its config hash. A sweep run and a child of one configuration and seed
    are two members: the child logs a model and is what the report reads."""
    return tags.get(keys.ROLE, "child"), tags.get(keys.CONFIG_HASH)


def rival(mine: RunRecord, others: Sequence[RunRecord], *, running: bool) -> RunRecord | None:
    """The run that holds `mine`'s member instead of it, if any: one that FINISHED, or
    (with `running`) one RUNNING in a live process and opened before it."""
    for other in others:
        if other.run_id == mine.run_id or member(other.tags) != member(mine.tags):
            continue
        if other.status == "FINISHED":
            return other
        if (
            running
            and other.status == "RUNNING"
            and process_alive(other.tags)
            and (other.start_time, other.run_id) < (mine.start_time, mine.run_id)
        ):
            return other
    return None


def contested(
    tracker: Tracker,
    parent_id: str | None,
    run_ids: Sequence[str],
    *,
    running: bool,
    role: str | None = None,
) -> dict[str, ClaimedElsewhere]:
    """Withdraws those of `run_ids` whose member another run holds; returns them, each with
    why. Runs without a parent or config hash (not a comparison's) are never contested.
    `role`, when every one of `run_ids` has it, narrows the look to the runs of that role."""
    if not parent_id or not run_ids:
        return {}
    runs = tracker.children(parent_id, tags={keys.ROLE: role} if role else None)
    mine = {run.run_id: run for run in runs if run.run_id in run_ids}
    lost = {}
    for run_id, run in mine.items():
        if keys.CONFIG_HASH not in run.tags:
            continue
        other = rival(run, runs, running=running)
        if other is not None:
            tracker.withdraw(run_id)
            lost[run_id] = ClaimedElsewhere(other)
    return lost


def holders(tracker: Tracker, parent_id: str) -> dict[tuple[str, str | None], str]:
    """How each member (`member`) of the parent stands: `FINISHED`, `FAILED` (it diverged:
    training it again would too) or `LIVE` (RUNNING in a live process). Others are free."""
    state: dict[tuple[str, str | None], str] = {}
    rank = {"FINISHED": 3, "FAILED": 2, "LIVE": 1}
    for run in tracker.children(parent_id):
        key = member(run.tags)
        status = "LIVE" if run.status == "RUNNING" and process_alive(run.tags) else run.status
        if key[1] and status in rank and rank[status] > rank.get(state.get(key, ""), 0):
            state[key] = status
    return state
