"""Running a model on images: the full / tiles / tlc modes, and tiled TLC for images larger than
memory (tile planning and the receptive-field reach that sets the tiles' margin).

Layers: :mod:`.plan` (tiles and running them) <- :mod:`.reach` (margins from the model) <-
:mod:`.modes` (the modes and :func:`restore`).
"""

from .._util import final_output
from .modes import MODES, RunSettings, feather_weights, model_tile_plan, restore, run_tiled, tile_starts
from .plan import Tile, TilePlan, grid_plan, plan_tiles, run_plan
from .reach import TileContext, probe_image, tile_context

__all__ = [
    "MODES",
    "RunSettings",
    "Tile",
    "TileContext",
    "TilePlan",
    "feather_weights",
    "final_output",
    "grid_plan",
    "model_tile_plan",
    "plan_tiles",
    "probe_image",
    "restore",
    "run_plan",
    "run_tiled",
    "tile_context",
    "tile_starts",
]
