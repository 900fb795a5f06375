"""Seeds until decided: which seeds each variant of a comparison trains, round by round.

Without a budget (`max_seeds`) every variant trains the experiment's seeds once. With
one, each round's verdicts decide whether the undecided expectations' variants get more
(see `dlkit.comparison.sequential` for why the error rate holds whenever it stops).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from dlkit.comparison.experiment import Experiment
from dlkit.comparison.reports import Comparison
from dlkit.text import plural, wrap


@dataclasses.dataclass
class Seeds:
    """The seeds each variant trains with, and the looks at the verdicts that added them.

    Without `max_seeds`, every variant trains the experiment's seeds and the
    verdicts look once. With it, after each round the undecided expectations'
    variants get a pack's worth more (as many as the experiment starts with),
    until every expectation is decided or the budget is reached (see
    `dlkit.comparison.sequential`).
    """

    by_variant: dict[str, list[int]]
    budget: int | None
    equivalence: float
    step: int
    looks: list[dict]
    error_rate: str = "per_comparison"
    interval: str = "t"
    stopped: str = ""

    @classmethod
    def start(cls, experiment: Experiment, plan_text: str | None) -> Seeds:
        """The first round: the experiment's seeds, or, resuming a parent that added seeds,
        where it stopped, with its looks kept (what they spent stays spent)."""
        labels = [variant.label for variant in experiment.variants]
        by_variant = {label: list(experiment.seeds) for label in labels}
        looks: list[dict] = []
        earlier = json.loads(plan_text) if plan_text else {}
        record = earlier.get("sequential") or {}
        if experiment.max_seeds and record.get("looks"):
            looks = record["looks"]
            for entry in earlier.get("runs", []):
                seeds = by_variant.get(entry["variant"])
                if seeds is not None and entry["seed"] not in seeds:
                    seeds.append(entry["seed"])
        seeds = cls(by_variant, experiment.max_seeds, experiment.equivalence,
                    len(experiment.seeds), looks, experiment.error_rate,
                    experiment.interval)  # fmt: skip
        if not looks:
            seeds.looks.append({"seeds": seeds.all, "budget": seeds.budget or 0})
        return seeds

    @property
    def all(self) -> list[int]:
        return sorted({seed for seeds in self.by_variant.values() for seed in seeds})

    def record(self) -> dict[str, Any]:
        """What the plan keeps of it, for the report to reach the same verdicts."""
        return {
            "max_seeds": self.budget,
            "equivalence": self.equivalence,
            "error_rate": self.error_rate,
            "interval": self.interval,
            "looks": self.looks,
            "stopped": self.stopped,
        }

    def more(self, comparison: Comparison, log: Callable[[str], None]) -> bool:
        """Adds seeds to the variants of undecided expectations; returns whether it did."""
        if not self.budget:
            return False
        open_ = [
            (verdict, expectation)
            for verdict, expectation in zip(comparison.expectations, comparison.parsed)
            if verdict.status == "inconclusive"
        ]
        if not open_:
            self.stopped = "every expectation decided"
            return False
        named = {label for _, e in open_ for label in (e.left, e.right) if isinstance(label, str)}
        labels = [  # in the file's order, those the budget leaves room for
            label
            for label in self.by_variant
            if label in named and len(self.by_variant[label]) < self.budget
        ]
        if not labels:
            self.stopped = f"the budget of {self.budget} seeds is reached"
            return False
        have = max(len(self.by_variant[label]) for label in labels)
        added: dict[int, list[str]] = {}
        for label in labels:
            count = min(self.step, self.budget - len(self.by_variant[label]))
            self.by_variant[label] += self._next(label, count)
            added.setdefault(count, []).append(label)
        self.looks.append({"seeds": self.all, "budget": self.budget})
        adding = " and ".join(
            f"{plural(count, 'seed')} to {', '.join(names)}" for count, names in added.items()
        )
        text = (
            f"{plural(len(open_), 'expectation')} undecided after {plural(have, 'seed')}: "
            f"adding {adding} (look {len(self.looks)}, budget {self.budget})."
        )
        for line in wrap(text, subsequent="  "):
            log(line)
        return True

    def _next(self, label: str, count: int) -> list[int]:
        """The next `count` seeds for a variant: first those other variants have (so that
        its runs pair with theirs), then new ones."""
        own = set(self.by_variant[label])
        seeds = [seed for seed in self.all if seed not in own]
        new = max(self.all) + 1
        while len(seeds) < count:
            seeds.append(new)
            new += 1
        return seeds[:count]
