"""The run-time view: global ops found by what the model computes while it runs, made local or
reported, by call site (see :mod:`tlc.convert.call_sites.converter` for how)."""

from .converter import (
    LEAVES_IMAGE,
    POOLED_VALUE,
    CallSite,
    CallSiteConverter,
    convert_call_sites,
    installed,
    recognise,
    remove_call_site_conversion,
)

__all__ = [
    "LEAVES_IMAGE",
    "POOLED_VALUE",
    "CallSite",
    "CallSiteConverter",
    "convert_call_sites",
    "installed",
    "recognise",
    "remove_call_site_conversion",
]
