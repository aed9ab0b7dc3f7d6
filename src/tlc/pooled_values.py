"""Pooled values under the name the README uses (``tlc.pooled_values``); they live in
:mod:`tlc.convert.pooled_values`."""

from .convert.pooled_values import Grid, PooledValueError, PooledValues

__all__ = ["Grid", "PooledValueError", "PooledValues"]
