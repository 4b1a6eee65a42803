"""Training callbacks that guard a run against faults: non-finite numbers and signals."""

from samft.train.callbacks.nan_guard import FiniteModelCheckpoint, NanGuard, NonFiniteTrainingError
from samft.train.callbacks.preemption import SaveOnSignal

__all__ = ["FiniteModelCheckpoint", "NanGuard", "NonFiniteTrainingError", "SaveOnSignal"]
