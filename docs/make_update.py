"""Times packs of the speed target's network with the optimizer's update compiled by XLA or not.

    python docs/make_update.py -d ../shared/data/mnist --members 4 --repeats 3

Plain Keras `fit` (float32) and a pack of `--members` seeds with `compile_update` off and on,
alternating in one run, 3 epochs on 20,000 images (the first epoch, tracing and compiling,
is left out of samples/s and counted in the pack's wall time). Prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dlkit.bench.benchmark import TARGET, plain_keras
from dlkit.data.dataset import load_dataset
from dlkit.nn.pack import train_pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--dataset", default="synthetic")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset(args.dataset, train_size=20000, validation_split=0.0)
    recipe, epochs = TARGET.replace(epochs=3, precision=args.precision), 3
    rows: dict[str, list[tuple[float, float, float, list[float]]]] = {}
    for rep in range(args.repeats):
        plain = plain_keras(TARGET, data, epochs, seed=rep)
        rows.setdefault("plain Keras fit, float32", []).append(
            (plain["samples_per_second"], 1.0, 0.0, [plain["test_accuracy"]])
        )
        for compiled in (False, True):
            seeds = [100 * rep + i for i in range(args.members)]
            began = time.perf_counter()
            members, _, seconds = train_pack(
                [recipe] * args.members, seeds, data, compile_update=compiled
            )
            wall = time.perf_counter() - began
            speed = args.members * data.info.train_size * (epochs - 1) / sum(seconds[1:])
            rows.setdefault(f"pack K={args.members}, update compiled={compiled}", []).append(
                (
                    speed,
                    speed / plain["samples_per_second"],
                    wall,
                    [m.test["accuracy"] for m in members],
                )
            )
    print(f"{args.precision}, {args.repeats} alternating repeats, medians")
    for name, runs in rows.items():
        accuracies = [a for run in runs for a in run[3]]
        print(
            f"{name:36s} {statistics.median(r[0] for r in runs):9,.0f} samples/s  "
            f"{statistics.median(r[1] for r in runs):.2f}x {[round(r[1], 2) for r in runs]}  "
            f"wall {statistics.median(r[2] for r in runs):5.1f} s  "
            f"test acc {np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f}"
        )


if __name__ == "__main__":
    main()
