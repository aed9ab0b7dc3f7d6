"""The model zoo: the registry of released and bundled models, checkpoint reading, architecture
detection, loading, and choosing a model with its TLC sizes.

Layers: :mod:`.registry`, :mod:`.checkpoints` <- :mod:`.detect` <- :mod:`.load` <- :mod:`.choose`.
"""

from .checkpoints import CONTAINER_KEYS, CheckpointError, read_state_dict
from .choose import ChosenModel, choose_model
from .detect import NOT_IN_WEIGHTS, detect
from .load import load_model
from .registry import ModelEntry

__all__ = [
    "CONTAINER_KEYS",
    "CheckpointError",
    "ChosenModel",
    "ModelEntry",
    "NOT_IN_WEIGHTS",
    "choose_model",
    "detect",
    "load_model",
    "read_state_dict",
]
