"""The model zoo: the registry of released and bundled models, checkpoint reading, released
weights downloaded on first use, architecture detection, loading, and choosing a model with its
TLC sizes.

Layers: :mod:`.registry`, :mod:`.checkpoints` <- :mod:`.detect`, :mod:`.download` <- :mod:`.load`
<- :mod:`.choose`.
"""

from .checkpoints import CONTAINER_KEYS, CheckpointError, read_state_dict
from .choose import ChosenModel, choose_model
from .detect import NOT_IN_WEIGHTS, detect
from .download import DownloadError, cache_dir, cached_weights, ensure_weights, weights_path
from .load import load_model
from .registry import ModelEntry

__all__ = [
    "CONTAINER_KEYS",
    "CheckpointError",
    "ChosenModel",
    "DownloadError",
    "ModelEntry",
    "NOT_IN_WEIGHTS",
    "cache_dir",
    "cached_weights",
    "choose_model",
    "detect",
    "ensure_weights",
    "load_model",
    "read_state_dict",
    "weights_path",
]
