"""Which run stands for each member of a comparison: one scan, one precedence rule.

A member is what a comparison trains once: a role (a measuring `child`, or a
`tuning` sweep's run) and a config hash. A parent may hold several runs of one
member: a failed try and its retry, a run killed by Ctrl-C, two processes that
raced. Resume, the tuning sweep, the claims protocol and the report all ask
"which run counts?", and `members` is their one answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dlkit import keys
from dlkit.tracking.tracker import RunRecord, Tracker, process_alive

# What a member's run is, best first. LIVE is a run RUNNING in a process still alive;
# GONE is one left RUNNING by a process that is not.
STATES = ("FINISHED", "FAILED", "LIVE", "KILLED", "GONE")


@dataclasses.dataclass(frozen=True)
class MemberRun:
    """The run that counts for one member of a comparison.

    Attributes:
        role: `"child"` (a measured run) or `"tuning"` (a sweep's run).
        config_hash: The configuration's hash (recipe, data, seed).
        run: The run that counts.
        state: One of `STATES`.
        runs: How many runs the parent holds for this member.
    """

    role: str
    config_hash: str
    run: RunRecord
    state: str
    runs: int = 1


def member_key(tags: dict[str, str]) -> tuple[str, str | None]:
    """What a run trains for its comparison: its role and its config hash. A sweep run and a
    child of one configuration and seed are two members: the child logs a model and is what
    the report reads."""
    return tags.get(keys.ROLE, "child"), tags.get(keys.CONFIG_HASH)


def state_of(run: RunRecord) -> str:
    """A run's state in `STATES`: its status, with RUNNING read as LIVE or GONE."""
    if run.status == "RUNNING":
        return "LIVE" if process_alive(run.tags) else "GONE"
    return run.status


def members(
    tracker: Tracker,
    parent_id: str,
    role: str | None = None,
    *,
    runs: Sequence[RunRecord] | None = None,
) -> dict[tuple[str, str], MemberRun]:
    """Returns the run that counts for each member of a comparison, keyed by (role, hash).

    The rule: a FINISHED run beats a FAILED one (it diverged: training it again
    would too), which beats a LIVE one (training now), which beats a KILLED run
    or one whose process is gone. Among FINISHED runs the one started first
    counts, so a later duplicate never changes which run a report or a resume
    names; among runs of any other state the newest counts, since the latest
    try says most about why the member has not finished.

    Args:
        tracker: The comparison's tracker.
        parent_id: The comparison's parent run.
        role: Only members of this role (`"child"` or `"tuning"`). Defaults to `None`: all.
        runs: The comparison's runs as `Tracker.children` read them, newest first, when the
            caller has read them already (one read serves a comparison's look). Defaults
            to `None`: read them.

    Returns:
        A `MemberRun` per member. Runs without a config hash (not a comparison's) are left out.
    """
    found: dict[tuple[str, str], MemberRun] = {}
    for run in tracker.children(parent_id) if runs is None else runs:  # newest first
        run_role, config = member_key(run.tags)
        if config is None or (role and run_role != role):
            continue
        key = (run_role, config)
        state = state_of(run)
        current = found.get(key)
        count = current.runs + 1 if current else 1
        if current is None or _beats(state, run, current):
            found[key] = MemberRun(run_role, config, run, state, count)
        else:
            found[key] = dataclasses.replace(current, runs=count)
    return found


def _beats(state: str, run: RunRecord, current: MemberRun) -> bool:
    rank, held = STATES.index(state), STATES.index(current.state)
    if rank != held:
        return rank < held
    if state == "FINISHED":  # the earlier start wins; runs come newest first
        return (run.start_time, run.run_id) < (current.run.start_time, current.run.run_id)
    return False  # another state: the newer, seen first, stays


def finished(
    tracker: Tracker,
    parent_id: str,
    role: str | None = None,
    *,
    runs: Sequence[RunRecord] | None = None,
) -> dict[str, str]:
    """The finished members' run ids by config hash (of one role, or of `child` runs); `runs`
    as for `members`."""
    return {
        m.config_hash: m.run.run_id
        for m in members(tracker, parent_id, role or "child", runs=runs).values()
        if m.state == "FINISHED"
    }
