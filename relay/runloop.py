"""uvloop when it is installed, asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio


def run(main, *, use_uvloop: bool = True):
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
