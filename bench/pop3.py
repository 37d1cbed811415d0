"""The POP3 workloads of bench/run.py: logins/s at 1 and 16 clients, RETR MB/s of 1 MB messages.

Direct is poplib against Dovecot POP3S with `AUTH XOAUTH2` (the token on its own line); the relay
and email-oauth2-proxy take USER/PASS in plaintext on 127.0.0.1, as a legacy reader would.
"""

from __future__ import annotations

import base64
import concurrent.futures
import poplib
import time

from tests.support.upstream import xoauth2_string

POP3_MAILBOX_MESSAGES = 100


def pop3_session(world, target: str, run) -> poplib.POP3:
    if target == "direct":
        pop: poplib.POP3 = poplib.POP3_SSL("127.0.0.1", world.upstream.pop3_port, context=world.tls,
                                           timeout=run.CLIENT_TIMEOUT)
        pop._shortcmd("AUTH XOAUTH2")
        sasl = base64.b64encode(xoauth2_string(run.MAILBOX, world.direct_token()).encode()).decode()
        pop._shortcmd(sasl)
        return pop
    if target == "emailproxy":
        pop = poplib.POP3("127.0.0.1", world.emailproxy.pop3_port, timeout=run.CLIENT_TIMEOUT)
        pop.user(run.MAILBOX)
        pop.pass_(run.PASSWORD)
        return pop
    pop = poplib.POP3("127.0.0.1", world.relay.pop3_port, timeout=run.CLIENT_TIMEOUT)
    pop.user(run.USER)
    pop.pass_(run.PASSWORD)
    return pop


def pop3_logins(world, target, run, *, concurrency: int, per_worker: int, name: str) -> float:
    def worker(_) -> int:
        done = 0
        try:
            for _ in range(per_worker):
                pop = pop3_session(world, target, run)
                pop.stat()
                pop.quit()
                done += 1
        except (OSError, poplib.error_proto):
            run.FAILURES[(name, target)] = run.FAILURES.get((name, target), 0) + per_worker - done
        return done

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(worker, range(concurrency)))
    return done / (time.perf_counter() - started)


def pop3_retr_mbps(world, target, run, *, count: int) -> float:
    pop = pop3_session(world, target, run)
    started = time.perf_counter()
    total = 0
    for i in range(1, count + 1):
        _resp, _lines, octets = pop.retr(i)
        total += octets
    elapsed = time.perf_counter() - started
    pop.quit()
    return total / elapsed / 1e6


def pop3_rows(world, targets, reps, scale, run) -> list:
    rows = []
    for conc, per in ((1, 40), (16, 5)):
        per = max(1, int(per * scale))
        name = f"POP3 logins/s (USER/PASS+STAT+QUIT), {conc} clients"
        res = run.interleaved(targets, reps, lambda t: pop3_logins(
            world, t, run, concurrency=conc, per_worker=per, name=name))
        rows.append((name, "login/s", run.med(res, name)))
    count = POP3_MAILBOX_MESSAGES
    world.upstream.deliver_many(run.MAILBOX, [run.message(1_000_000) for _ in range(count)])
    res = run.interleaved(targets, reps, lambda t: pop3_retr_mbps(world, t, run, count=count))
    name = f"POP3 RETR {count} x 1 MB"
    rows.append((name, "MB/s", run.med(res, name)))
    run.progress("POP3")
    return rows
