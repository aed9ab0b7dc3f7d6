"""The run-time view under the name docs/functional.md uses (``tlc.functional.POOLED_VALUE``,
``installed``, ``remove_call_site_conversion``); it lives in :mod:`tlc.convert.call_sites`."""

from .convert.call_sites import (
    LEAVES_IMAGE,
    POOLED_VALUE,
    CallSite,
    CallSiteConverter,
    convert_call_sites,
    installed,
    remove_call_site_conversion,
)

__all__ = [
    "LEAVES_IMAGE",
    "POOLED_VALUE",
    "CallSite",
    "CallSiteConverter",
    "convert_call_sites",
    "installed",
    "remove_call_site_conversion",
]
