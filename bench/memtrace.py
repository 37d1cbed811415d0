"""Python memory for one 20 MiB message on relay365's DATA path, traced with tracemalloc.

    .venv/bin/python -m bench.memtrace

Decodes a 20 MiB DATA (DataReader) into a Body, rewrites the From (rewrite_message) and encodes it
for the upstream (WireEncoder) chunk by chunk, as the relay does, and prints the peak of traced
allocations. BENCHMARKS.md has the same measurement for the code before issue 12 (164 MiB).
"""

from __future__ import annotations

import tracemalloc

from relay365.delivery.message import Body
from relay365.delivery.wire import WireEncoder
from relay365.smtp.data import DataReader
from relay365.smtp.rewrite import rewrite_message

body = b"".join(b"%064d\r\n" % i for i in range(20 * 2**20 // 66))
wire = b"From: a@lan.test\r\nSubject: s\r\n\r\n" + body + b".\r\n"
tracemalloc.start()
reader, b = DataReader(None), Body()
for i in range(0, len(wire), 65536):
    b.write(reader.feed(wire[i:i + 65536]))
enc, sent = WireEncoder(), 0
for chunk in rewrite_message(b, "box@contoso.test").chunks():
    sent += len(enc.feed(chunk))
peak = tracemalloc.get_traced_memory()[1]
print(f"peak traced: {peak / 2**20:.2f} MiB for a {len(wire) / 2**20:.0f} MiB message "
      f"(sent {sent / 2**20:.0f} MiB)")
b.close()
