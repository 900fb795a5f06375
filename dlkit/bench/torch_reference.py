"""PyTorch eager training of a dense ReLU net: `dlkit bench`'s reference line.

    python -m dlkit.bench.torch_reference data.npz '{"hidden": [500, 500], "classes": 10, ...}'

Reads `x`, `y`, `x_test`, `y_test` (inputs already scaled) from the .npz file, trains
with Adam and softmax cross-entropy, and prints one JSON line: samples per second
after the first epoch, and test accuracy. It imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def train(arrays: dict[str, np.ndarray], spec: dict) -> dict[str, float]:
    """Trains the network `spec` describes on `arrays`; returns speed and test accuracy."""
    import torch

    torch.manual_seed(spec["seed"])
    x = torch.from_numpy(np.ascontiguousarray(arrays["x"], dtype=np.float32))
    y = torch.from_numpy(arrays["y"].astype(np.int64))
    sizes = [x.shape[1], *spec["hidden"]]
    layers: list[torch.nn.Module] = []
    for inputs, outputs in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(inputs, outputs), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], spec["classes"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"])
    loss_fn = torch.nn.CrossEntropyLoss()  # softmax and cross-entropy, as Keras's
    batch_size, seconds = spec["batch_size"], []
    for _ in range(spec["epochs"]):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            batch = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
                loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        x_test = torch.from_numpy(np.ascontiguousarray(arrays["x_test"], dtype=np.float32))
        predicted = model(x_test).argmax(1).numpy()
    timed = seconds[1:] or seconds
    return {
        "samples_per_second": len(x) * len(timed) / sum(timed),
        "test_accuracy": float(np.mean(predicted == arrays["y_test"])),
    }


if __name__ == "__main__":
    with np.load(sys.argv[1]) as npz:
        print(json.dumps(train(dict(npz), json.loads(sys.argv[2]))))
