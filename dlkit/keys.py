"""Names shared by what logs runs and what reads them back: metric prefixes and tags."""

from __future__ import annotations

GRAD_PREFIX = "grad_norm_"  # grad_norm_1 (nearest the input) ... grad_norm_<L> (the output)
CORRECT_ARTIFACT = "test_correct.npy"  # per test example: did the trained model get it right
