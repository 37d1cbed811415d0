"""Loaded by the relay process when bench/heaptrace is on its PYTHONPATH (`bench.soak
--tracemalloc` does that): traces the relay's Python allocations with tracemalloc and writes a
snapshot to $RELAY365_HEAP_SNAPSHOTS/NNN.snap every $RELAY365_HEAP_EVERY seconds (default 300),
from a daemon thread. Comparing two of them (bench.soak does, at its end) says which lines hold
the memory that grew between them; what RSS gained beyond that is outside Python's allocator
(OpenSSL, uvloop, glibc's heap). Tracing costs CPU and memory of its own: not for figures of
RSS or CPU, only for where growth comes from.
"""

import os

if os.environ.get("RELAY365_HEAP_SNAPSHOTS"):
    import pathlib
    import threading
    import time
    import tracemalloc

    _out = pathlib.Path(os.environ["RELAY365_HEAP_SNAPSHOTS"])
    _every = float(os.environ.get("RELAY365_HEAP_EVERY", "300"))
    tracemalloc.start(int(os.environ.get("RELAY365_HEAP_FRAMES", "6")))

    def _snapshots() -> None:
        n = 0
        while True:
            time.sleep(_every)
            n += 1
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            tmp = _out / f"{n:03}.snap.tmp"
            snap.dump(str(tmp))
            tmp.rename(_out / f"{n:03}.snap")

    threading.Thread(target=_snapshots, name="heaptrace", daemon=True).start()
