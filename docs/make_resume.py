"""Measures what an interrupt costs a pack: a comparison interrupted at a random point of its
pack and rerun, against the same comparison uninterrupted, and writes docs/resume.md.

    python docs/make_resume.py --dataset path/to/mnist            # 3 pairs

The pack is the issue's: 4 members of 784-500-500-10 (deep-relu, 4 seeds) on 20,000 MNIST
images, 5 epochs. Each pair runs, alternately, the uninterrupted comparison and the
interrupted one (SIGINT at a uniformly random time between the pack's first saved epoch and
its expected end), each a new `dlkit compare` process on a store of its own, then the rerun.
It reports the rerun's wall time against the time of the epochs it had to train again (those
after the last save), and whether every member's test accuracy equals the uninterrupted one's.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "resume.md"
EPOCHS = 5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="A folder of MNIST's IDX files.")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="Seeds the interrupt times.")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "docs"))
    from make_decided import cpu

    chance = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dlkit-resume-") as tmp:
        folder = Path(tmp)
        experiment = folder / "resume.yaml"
        experiment.write_text(yaml.safe_dump(_experiment(args.dataset)))
        for pair in range(args.pairs):
            rows.append(_pair(folder / f"pair{pair}", experiment, chance))
            print(json.dumps(rows[-1]), flush=True)
    PAGE.write_text(_page(rows, cpu()))
    print(PAGE)


def _experiment(dataset: str) -> dict:
    return {
        "name": "resume",
        "dataset": {"source": str(Path(dataset).resolve()), "train_size": 20_000},
        "seeds": 4,
        "overrides": {"depth": 2, "width": 500, "epochs": EPOCHS},
        "variants": ["deep-relu"],
    }


def _pair(folder: Path, experiment: Path, chance: random.Random) -> dict:
    folder.mkdir(parents=True)
    whole, whole_seconds = _run(folder, "whole", experiment)
    epoch = whole_seconds["epoch"]
    process, began = _start(folder, "cut", experiment), time.monotonic()
    while not list((folder / "cut").glob("**/checkpoints/*.json")):
        if process.poll() is not None:
            raise SystemExit(process.communicate()[0])
        time.sleep(0.05)
    first_save = time.monotonic() - began
    delay = chance.uniform(0, max(0.1, whole_seconds["training"] - epoch))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    message = process.communicate(timeout=300)[0]
    saved = int(message.split("saved at epoch ")[1].split()[0]) if "saved at" in message else 0
    cut, rerun_seconds = _run(folder, "cut", experiment)
    return {
        "interrupt_after_first_save_s": round(delay, 1),
        "first_save_at_s": round(first_save, 1),
        "saved_epoch": saved,
        "epoch_s": round(epoch, 2),
        "unsaved_epochs_s": round(epoch * (EPOCHS - saved), 1),
        "rerun_s": round(rerun_seconds["wall"], 1),
        "whole_s": round(whole_seconds["wall"], 1),
        "equal": all(abs(cut[k] - whole[k]) <= 1e-6 for k in whole) and cut.keys() == whole.keys(),
    }


def _start(folder: Path, name: str, experiment: Path) -> subprocess.Popen:
    """A `dlkit compare` on a store of its own, `<folder>/<name>/mlflow.db` (its artifacts
    beside it)."""
    (folder / name).mkdir(exist_ok=True)
    store = f"sqlite:///{folder / name / 'mlflow.db'}"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dlkit.cli",
            "compare",
            str(experiment),
            "--tracking-uri",
            store,
            "--output",
            str(folder / name / "reports"),
        ],  # fmt: skip
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(folder: Path, name: str, experiment: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Runs (or reruns) a comparison to its end; its members' test accuracies and seconds."""
    from mlflow.tracking import MlflowClient

    began = time.monotonic()
    process = _start(folder, name, experiment)
    output = process.communicate()[0]
    wall = time.monotonic() - began
    if process.returncode:
        raise SystemExit(output)
    client = MlflowClient(f"sqlite:///{folder / name / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("resume").experiment_id
    runs = client.search_runs(
        [experiment_id], "tags.`dlkit.role` = 'child' and attributes.status = 'FINISHED'"
    )
    accuracy = {r.data.tags["dlkit.config_hash"]: r.data.metrics["test_accuracy"] for r in runs}
    training = sum(r.data.metrics["wall_time_s"] for r in runs)  # members' shares: the pack's
    epoch = training / EPOCHS
    return accuracy, {"wall": wall, "training": training, "epoch": epoch}


def _page(rows: list[dict], cpu_name: str) -> str:
    lines = [
        "# What an interrupt costs a pack",
        "",
        "A comparison whose one pack (4 members of 784-500-500-10, 20,000 MNIST images, 5",
        "epochs) is interrupted by SIGINT at a random point and rerun, against the same",
        "comparison uninterrupted, each a new `dlkit compare` process on a store of its own,",
        "alternately. The rerun continues from the epoch the interrupt arrived in. Regenerate",
        "with `python docs/make_resume.py --dataset path/to/mnist`.",
        "",
        f"CPU: {cpu_name}, 2 cores.",
        "",
        "| pair | saved at epoch | epoch (s) | epochs left (s) | rerun (s) | rerun - left (s) "
        "| uninterrupted (s) | results equal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(rows, 1):
        over = row["rerun_s"] - row["unsaved_epochs_s"]
        lines.append(
            f"| {i} | {row['saved_epoch']} of {EPOCHS} | {row['epoch_s']} | "
            f"{row['unsaved_epochs_s']} | {row['rerun_s']} | {over:.1f} | {row['whole_s']} | "
            f"{'yes' if row['equal'] else 'no'} |"
        )
    overs = [row["rerun_s"] - row["unsaved_epochs_s"] for row in rows]
    lines += [
        "",
        f"Median of the rerun's time beyond the epochs it trained again: "
        f"{statistics.median(overs):.1f} s (start-up, loading the data and TensorFlow, logging).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
