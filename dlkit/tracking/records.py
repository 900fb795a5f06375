"""Runs read back as plain values: a `RunRecord` each, a comparison's runs, its latest parent."""

from __future__ import annotations

import dataclasses
from typing import Any

from dlkit import keys

_MAX_CHILDREN = 50_000
_MAX_PARENTS = 1_000  # the latest parents a resume looks through for one of its kind


def record(run: Any) -> RunRecord:
    """An MLflow run as a `RunRecord`."""
    return RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
    )


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain values: what reports and resumes read.

    Attributes:
        run_id: The run's id.
        status: `FINISHED`, `FAILED`, `KILLED` or `RUNNING`.
        start_time: Start, in milliseconds since the epoch.
        tags: The run's tags.
        params: The run's params, as text.
        metrics: The latest value of each metric.
    """

    run_id: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


def latest_parent(
    client: Any, experiment_id: str, like: dict[str, str] | None = None
) -> str | None:
    """Returns the id of the experiment's most recent comparison parent run, if any.

    Args:
        like: Tags the parent must carry as these values (a tuned comparison resumes
            a tuned parent, not an untuned one). A parent without the tag carries the
            value it had before dlkit wrote the tag: `fixed` for the split, `no`
            for tuned; without the grid or data tags, it matches any. Defaults to
            `None`: any parent.
    """
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{keys.ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=_MAX_PARENTS,
    )
    before = {keys.SPLIT: "fixed", keys.TUNED: "no"}
    for run in found:
        tags = run.data.tags
        if all(tags.get(k, before.get(k, v)) == v for k, v in (like or {}).items()):
            return run.info.run_id
    return None


def children(
    client: Any,
    experiment_id: str,
    parent_id: str,
    status: str | None = None,
    tags: dict[str, str] | None = None,
    *,
    untagged: bool = True,
) -> list[RunRecord]:
    """Returns the runs of the comparison under `parent_id`, newest first, optionally of
    one status and with these tag values: its children and the runs nested deeper (a
    variant's sweep runs under its tuning run), which carry `dlkit.comparison`, and (with
    `untagged`) the parent's children logged before dlkit wrote that tag."""
    where = ""
    if status:
        where += f" and attributes.status = '{status}'"
    for key, value in (tags or {}).items():
        where += f" and tags.`{key}` = '{value}'"
    found = {}
    # Runs logged before dlkit tagged the comparison are the parent's children only: the
    # second search returns just those (no tag), so it costs little when there are none.
    links = [f"tags.`{keys.COMPARISON}` = '{parent_id}'"]
    if untagged:
        links.append(
            f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{keys.COMPARISON}` IS NULL"
        )
    for link in links:
        for run in client.search_runs(
            [experiment_id],
            filter_string=f"{link}{where}",
            order_by=["attributes.start_time DESC"],
            max_results=_MAX_CHILDREN,
        ):
            found.setdefault(run.info.run_id, run)
    runs = sorted(found.values(), key=lambda r: r.info.start_time, reverse=True)
    return [record(run) for run in runs]
