"""Measures what deciding costs: fixed 3 seeds against seeds added until decided, and writes
docs/decided.md.

    python docs/make_decided.py                                  # the quickstart, 3 pairs
    python docs/make_decided.py --lesson optimizers --tune --dataset path/to/mnist --pairs 1 \
        --budget 15

Each comparison runs as its own `dlkit compare` process on a store of its own, so nothing is
resumed and each pays its own start-up. The two ways alternate (fixed, decided, fixed, ...) so
a machine that slows down or speeds up mid-run weighs on both alike; the table gives the
median wall time of each, their ratio, and how many expectations each decided.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "decided.md"
RESULTS = ROOT / "docs" / "decided.json"
_STATUS = re.compile(r"^\s+\[(HELD|CONTRADICTED|EQUIVALENT|INCONCLUSIVE|UNCHECKED)\] ")


def cpu() -> str:
    """The CPU's model name and its widest vector units (a VM's model name may say little)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    lines = out.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if "Model name" in line), "?")
    flags = next((line for line in lines if line.startswith("Flags")), "").split()
    units = [
        label
        for flag, label in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
        if flag in flags
    ]
    return f"{name} ({', '.join(units[:2]) or 'no AVX2'})"


def once(stem: str, decided: bool, dataset: str | None, budget: int, tune: bool) -> dict:
    """One comparison in a new process and a new store: its wall time and its verdicts."""
    command = [sys.executable, "-m", "dlkit.cli", "compare", f"experiments/{stem}.yaml"]
    command += ["--max-seeds", str(budget if decided else 3)]
    if not decided:
        command += ["--split", "fixed"]
    if dataset:
        command += ["--dataset", dataset]
    if tune:  # a lesson whose file does not tune
        command += ["--tune", "learning_rate"]
    with tempfile.TemporaryDirectory(prefix="dlkit-decided-") as tmp:
        command += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--output", f"{tmp}/reports"]
        start = time.perf_counter()
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    statuses = [m[1].lower() for line in out.stdout.splitlines() if (m := _STATUS.match(line))]
    seeds = re.search(r"Data: .*?\. (\d+) seeds", out.stdout)
    return {
        "seconds": seconds,
        "statuses": statuses,
        "seeds": int(seeds[1]) if seeds else None,
        "report": out.stdout,
    }


def measure(stem: str, pairs: int, dataset: str | None, budget: int, tune: bool) -> dict:
    runs: dict[str, list[dict]] = {"fixed": [], "decided": []}
    for i in range(pairs):
        for way in ("fixed", "decided"):
            runs[way].append(once(stem, way == "decided", dataset, budget, tune))
            print(f"{stem} pair {i + 1} {way}: {runs[way][-1]['seconds']:.1f} s "
                  f"{runs[way][-1]['statuses']}", flush=True)  # fmt: skip
    return {
        "lesson": stem,
        "dataset": dataset,
        "budget": budget,
        "pairs": pairs,
        "cpu": cpu(),
        "fixed": [{k: v for k, v in r.items() if k != "report"} for r in runs["fixed"]],
        "decided": [{k: v for k, v in r.items() if k != "report"} for r in runs["decided"]],
        "ratios": [d["seconds"] / f["seconds"] for f, d in zip(runs["fixed"], runs["decided"])],
        "last_report": runs["decided"][-1]["report"],
    }


def decided_count(statuses: list[str]) -> int:
    return sum(s in ("held", "contradicted", "equivalent") for s in statuses)


def write(results: list[dict]) -> None:
    rows = []
    for r in results:
        fixed = statistics.median(x["seconds"] for x in r["fixed"])
        decided = statistics.median(x["seconds"] for x in r["decided"])
        n = len(r["fixed"][0]["statuses"])
        rows.append(
            f"| {r['lesson']} | {r['cpu']} | {r['pairs']} | "
            f"{decided_count(r['fixed'][-1]['statuses'])} of {n} in {fixed:.0f} s | "
            f"{decided_count(r['decided'][-1]['statuses'])} of {n} in {decided:.0f} s "
            f"({r['decided'][-1]['seeds']} seeds) | {statistics.median(r['ratios']):.2f} |"
        )
    reports = "\n\n".join(
        f"### {r['lesson']}, until decided (budget {r['budget']})\n\n```\n"
        + "\n".join(
            line
            for line in r["last_report"].split("\nReport files")[0].strip().splitlines()
            if not line.startswith("[")  # the progress lines, one per run
        )
        + "\n```"
        for r in results
    )
    PAGE.write_text(
        f"""# What deciding costs

Each lesson is compared twice, in new processes on new stores, alternately: with its 3 seeds on
the source's fixed split (`--split fixed --max-seeds 3`), and as its file says, seeds added
until each expectation is decided (`--max-seeds N`; the quickstart's file draws a random split
per seed). Both are tuned. Wall time is the whole `dlkit compare` command, median over the
pairs; the ratio is the median of each pair's decided / fixed. Regenerate with
`python docs/make_decided.py` (the quickstart) and
`python docs/make_decided.py --lesson optimizers --tune --dataset path/to/mnist --budget 15`.

| lesson | CPU (2 cores) | pairs | fixed 3 seeds | until decided | time ratio |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## The screens, until decided

{reports}
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", default="quickstart")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--tune", action="store_true", help="tune the learning rate (lessons)")
    parser.add_argument("--write", action="store_true", help="only rewrite the page")
    args = parser.parse_args()
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    if not args.write:
        result = measure(args.lesson, args.pairs, args.dataset, args.budget, args.tune)
        saved = [r for r in saved if r["lesson"] != args.lesson] + [result]
        RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    write(saved)


if __name__ == "__main__":
    main()
