"""The durable spool: accept a message to disk, answer 250, deliver it to Office 365 later.

Architecture, one page.

    SMTP handler --submit()--> SpoolWorker --enqueue (thread)--> SpoolQueue: state_dir/spool/
                                   |                                tmp/    being written
                                   | per mailbox: FIFO, token        queue/  waiting (one dir per message)
                                   | bucket, concurrency, holds      failed/ dead letters, with reason
                                   v
                         deliver(entry) -> refusals     (make_upstream_deliverer: UpstreamSMTP)

- `queue` (`SpoolQueue`) is the on-disk format and nothing else: every change is a write to a
  private place, fsync, one rename, fsync of the directory - maildir's recipe. A message is the
  directory `queue/<id>/` holding `message.eml` and `envelope.json`; it appears in `queue/` by one
  rename, so a crash leaves no entry or a whole one. Ids start with the arrival time in nanoseconds,
  so a sorted listing is arrival order. Operator tools use the same queue with a lock file.
- `schedule` is pure: backoff with jitter, lifetime, the token bucket, and the verdict on an error
  (retry this message, pause the mailbox, throttled, hold for re-authorisation, give up). Time is
  always a `now` argument.
- `worker` (`SpoolWorker`) is the only asyncio code: it keeps an index of `queue/`, rescans it every
  `rescan_interval` (so `relay365 queue retry` is noticed), wakes on every submit, starts deliveries
  by the rules of `schedule`, and records their outcome in the queue. Stopping lets deliveries in
  progress finish up to a timeout; whatever is cut off is still in `queue/` and is retried later.
- `cli` implements `relay365 queue list|show|retry|delete|failed`.

Delivery guarantee: at least once. A message is delivered twice only if the process dies between
the upstream's 250 and the removal of its queue entry.

Its configuration (`SpoolConfig`, the `spool:` section) is part of the one config model,
`relay365.config`.
"""

from __future__ import annotations
