"""Traced models kept for a variant's next seed: compiled once, reset to each seed's start.

Tracing a Keras model's training function costs a second or more; a comparison trains
each variant once per seed, so the last few traced models of this process are kept, keyed
by what they were traced from, and handed out reset to a new model's exact state.
"""

from __future__ import annotations

import keras
import numpy as np

from dlkit.data.dataset import Dataset


class _TracedModels:
    """The last few compiled and traced models of this process, by recipe and data.

    Taking one resets it to a new model's exact starting state: every
    variable of the layers (weights and the dropout layers' random-seed state)
    from a model just built under the new seed, and the optimizer's variables
    (step count, learning rate, moments) from their values before its first step.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: list[tuple[tuple, Dataset, keras.Model, list[np.ndarray]]] = []

    def take(
        self, key: tuple, data: Dataset, fresh: keras.Model
    ) -> tuple[keras.Model, list[np.ndarray]] | None:
        """Returns a kept model reset to `fresh`'s state, and its optimizer's start."""
        for i, (k, d, model, start) in enumerate(self._entries):
            if k == key and d.same_examples(data):
                del self._entries[i]
                targets, sources = model.variables, fresh.variables
                if [v.shape for v in targets] != [v.shape for v in sources]:
                    return None
                for target, source in zip(targets, sources):
                    target.assign(source)
                for variable, value in zip(model.optimizer.variables, start):
                    variable.assign(value)
                model.stop_training = False
                return model, start
        return None

    def clear(self) -> None:
        """Lets go of every kept model (and the memory its graph holds)."""
        self._entries.clear()

    def keep(self, key: tuple, data: Dataset, model: keras.Model, start: list[np.ndarray]) -> None:
        """Keeps a trained model for the next training of the same recipe on `data`."""
        self._entries = [e for e in self._entries if not (e[0] == key and e[1].same_examples(data))]
        self._entries.insert(0, (key, data, model, start))
        del self._entries[self.size :]


TRACED = _TracedModels()


def forget_traced_models() -> None:
    """Drops the models this process keeps traced for a variant's next seed (at most
    `_TracedModels.size`): their memory back, and the next training traces afresh."""
    TRACED.clear()
