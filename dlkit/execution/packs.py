"""Which of a comparison's children train together: packs of members of one network shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dlkit.execution.children import ChildSpec
from dlkit.recipes.fields import BYTES_PER_PARAM, physical_memory
from dlkit.recipes.packing import pack_shape, trains_alone
from dlkit.recipes.recipe import Recipe

MAX_PACK = 32  # members per pack when memory allows: past about 16 a member costs no less
MEMORY_SHARE = 4  # the packs training at once may take a quarter of this machine's memory


@dataclasses.dataclass(frozen=True)
class Unit:
    """Children that train together: one pack, or one child alone with Keras's `fit`.

    Attributes:
        specs: The children, in the comparison's order.
        packed: Whether they train as one pack (`run_pack`); otherwise the one
            child trains alone (`run_child`).
    """

    specs: tuple[ChildSpec, ...]
    packed: bool


def units(
    specs: Sequence[ChildSpec],
    size: int,
    input_dim: int,
    num_classes: int,
    image_shape: Sequence[int] | None = None,
    *,
    at_once: int = 1,
) -> list[Unit]:
    """Groups children into packs of at most `size` members (0: as many as memory allows,
    with `at_once` packs training at the same time on this machine).

    Children pack when their recipes share a `pack_shape` and their runs a
    parent (and, with standardized inputs under a random split, their seed).
    One trains alone, with Keras's own `fit`, when `size` is 1, its recipe is
    not `packable`, it logs gradient norms (a Keras callback), or it trains on
    several devices.
    """
    groups: dict[object, list[ChildSpec]] = {}
    for i, spec in enumerate(specs):
        recipe = Recipe(**spec.recipe)
        alone = size == 1 or trains_alone(recipe, spec.options)
        # Under a random split each seed reads its own examples, and the pack each member's
        # through its indices; but standardized inputs use each seed's own statistics, which
        # a pack (one input layer for all) cannot: those pack with their own seed only.
        own_data = None
        if spec.data.get("split") == "random" and recipe.normalization == "standardize":
            own_data = spec.seed
        key = ("alone", i) if alone else (pack_shape(recipe), spec.parent_id, own_data)
        groups.setdefault(key, []).append(spec)
    found = []
    for key, members in groups.items():
        if key[0] == "alone":
            found.append(Unit(tuple(members), packed=False))
            continue
        cap = size or auto_size(key[0], input_dim, num_classes, image_shape, at_once=at_once)
        found += [
            Unit(tuple(members[i : i + cap]), packed=True) for i in range(0, len(members), cap)
        ]
    return found


def auto_size(
    recipe: Recipe,
    input_dim: int,
    num_classes: int,
    image_shape: Sequence[int] | None = None,
    *,
    at_once: int = 1,
) -> int:
    """Members per pack: `MAX_PACK`, fewer where the `at_once` packs training at the same
    time would take more than their memory share.

    Each member holds its weights, gradients and optimizer slots
    (`BYTES_PER_PARAM` a parameter) and a batch's activations.
    """
    widths = recipe.hidden_layers(input_dim, num_classes, image_shape)
    activations = recipe.batch_size * (input_dim + sum(widths) + num_classes) * 4 * 4
    params = recipe.param_count(input_dim, num_classes, image_shape)
    member = params * BYTES_PER_PARAM + activations
    memory = physical_memory()
    if not memory:
        return MAX_PACK
    return max(1, min(MAX_PACK, memory // MEMORY_SHARE // at_once // member))
