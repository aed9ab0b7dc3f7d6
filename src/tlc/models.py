"""``tlc.models.list()`` and ``tlc.models.get(name)``, as the README calls them; the registry
lives in :mod:`tlc.zoo.registry`."""

from .zoo.registry import BUNDLED, REGISTRY, ModelEntry, Result, get, list  # noqa: A004

__all__ = ["BUNDLED", "REGISTRY", "ModelEntry", "Result", "get", "list"]
