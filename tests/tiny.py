"""The tiny comparison several test modules run: ReLU vs sigmoid on 300 digits, 2 seeds."""

from __future__ import annotations

from typing import Any


def tiny(name: str, **changes: Any) -> dict[str, Any]:
    """Returns the tiny experiment as a file's mapping, named `name`, with `changes` applied."""
    return {
        "name": name,
        "question": "Does ReLU beat sigmoid here?",
        "dataset": {"source": "digits", "train_size": 300},
        "seeds": 2,
        "overrides": {"epochs": 2, "width": 16, "depth": 2, "batch_size": 64},
        "variants": [
            {"label": "relu", "recipe": "deep-relu"},
            # Inputs of its own make it another pack's (with the same steps and arithmetic): the
            # trials of workers, Ray and claims need two packs; ReLU and sigmoid alone share one.
            {
                "label": "sigmoid",
                "recipe": "deep-sigmoid",
                "overrides": {"normalization": "standardize"},
            },
        ],
        "expect": ["relu > sigmoid"],
        **changes,
    }
