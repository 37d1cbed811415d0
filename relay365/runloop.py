"""uvloop when it is installed, asyncio's own loop otherwise (or when RELAY365_LOOP=asyncio)."""

from __future__ import annotations

import asyncio
import os


def run(main):
    if os.environ.get("RELAY365_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
