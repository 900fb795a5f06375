"""Names shared by what logs runs and what reads them back: metric prefixes, artifacts, tags."""

from __future__ import annotations

GRAD_PREFIX = "grad_norm_"  # grad_norm_1 (nearest the input) ... grad_norm_<L> (the output)
CORRECT_ARTIFACT = "test_correct.npy"  # per test example: did the trained model get it right

# Tags, on every run dlkit opens or on a comparison's runs.
ROLE = "dlkit.role"  # parent, child (measured), sweep (a variant's tuning), tuning (a sweep run)
COMPARISON = "dlkit.comparison"  # on every run of a comparison: its parent, however nested
CONFIG_HASH = "dlkit.config_hash"  # what a run trained: resume, claims and reports match on it
VARIANT = "dlkit.variant"
SEED = "dlkit.seed"
SEEDS = "dlkit.seeds"  # on a parent: the seeds trained so far (a param could not change)
SETTING = "dlkit.setting"  # a sweep run's point, e.g. learning_rate=0.01
RECIPE = "dlkit.recipe"
DATASET = "dlkit.dataset"
QUESTION = "dlkit.question"
TUNED = "dlkit.tuned"  # on a parent: yes when its variants were tuned
SPLIT = "dlkit.split"  # on a parent: fixed or random (absent on parents before it: fixed)
GRID = "dlkit.grid"  # on a tuned parent: its tuning grid, e.g. learning_rate=0.01,0.1;seeds=2
VARIANTS = "dlkit.variants"  # on a parent: a hash of its variants' settings (all but the seed)
DATA = "dlkit.data"  # on a parent: which examples it reads, e.g. source=digits,train_size=300
HOST = "dlkit.host"  # the process that holds a run, so a later one can tell it is gone
PID = "dlkit.pid"
HEARTBEAT = "dlkit.heartbeat"  # Unix time the holding process last said it runs (other hosts)
FAILURE = "dlkit.failure"  # why a run ended FAILED or KILLED
VERSION = "dlkit.version"  # the dlkit that opened the run: how dlkit's runs are told apart
ONEDNN = "dlkit.onednn"  # TF_ENABLE_ONEDNN_OPTS as TensorFlow loaded it: it changes numerics
DEVICE = "dlkit.device"  # CPU or GPU, where a child trained
RESUMED = "dlkit.resumed_epoch"  # a member continued from its pack's checkpoint of that epoch
# On a comparison's parent, once its report is made.
FAILED_RUNS = "dlkit.failed_runs"
BEST_VARIANT = "dlkit.best_variant"
EXPECTATIONS_HELD = "dlkit.expectations_held"  # e.g. 2/3
# A dataset input's source, in MLflow's Datasets column.
SOURCE = "dlkit.source"
