"""The ``tlc`` command: one module per subcommand (restore, eval, inspect, synth, export), the
options and output they share (:mod:`.common`), and the model they load (:mod:`.chooser`, over
:func:`tlc.zoo.choose_model`)."""

from .common import UsageError
from .main import build_parser, main

__all__ = ["UsageError", "build_parser", "main"]
