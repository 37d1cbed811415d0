"""scrypt password hashes: the format, verification, malformed hashes, constant time, the cache.

Hashes here use ln=10 (N = 1024, about a millisecond), the lowest cost the config accepts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import threading

import pytest

from relay365 import passwords
from relay365.passwords import Verifier, check_hash_format, hash_password, verify_password
from relay365.secret import Secret

SALT = b"0123456789abcdef"
# an independent computation of the hash of "pw": hashlib directly, in the documented format
KNOWN = "$scrypt$ln=10,r=8,p=1${}${}".format(
    base64.b64encode(SALT).decode().rstrip("="),
    base64.b64encode(hashlib.scrypt(b"pw", salt=SALT, n=1024, r=8, p=1, dklen=32)).decode().rstrip("="))


def test_hash_format_and_parameters():
    h = hash_password("correct horse", ln=11, r=4, p=2)
    m = re.fullmatch(r"\$scrypt\$ln=11,r=4,p=2\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", h)
    assert m, h
    salt, key = (base64.b64decode(g + "=" * (-len(g) % 4)) for g in m.groups())
    assert (len(salt), len(key)) == (16, 32)
    assert key == hashlib.scrypt(b"correct horse", salt=salt, n=2048, r=4, p=2, dklen=32)
    assert check_hash_format(h) is None


def test_default_cost_is_recorded_in_the_hash(monkeypatch):
    seen = []
    monkeypatch.setattr(passwords, "_scrypt", lambda pw, salt, ln, r, p: seen.append((ln, r, p)) or bytes(32))
    assert hash_password("x").startswith("$scrypt$ln=15,r=8,p=1$") and seen == [(15, 8, 1)]


def test_verification():
    h = hash_password("correct horse", ln=10)
    assert verify_password("correct horse", h)
    assert not verify_password("correct hors", h) and not verify_password("", h)
    assert verify_password("correct horse", f"  {h}\n")  # as pasted into YAML
    assert hash_password("x", ln=10) != hash_password("x", ln=10)  # salted


def test_an_independently_made_hash_verifies():
    assert verify_password("pw", KNOWN) and not verify_password("pW", KNOWN)


def test_unicode_passwords():
    h = hash_password("pässwörd ✓", ln=10)
    assert verify_password("pässwörd ✓", h) and not verify_password("passwörd ✓", h)


FORMAT = "not a relay365 password hash (make one with: relay365 hash-password)"
RANGE = "scrypt parameters out of range (ln 10-20, r 1-32, p 1-16)"
BASE64 = "salt or key is not valid base64 (copy the whole line relay365 hash-password printed)"
GOOD_PARTS = KNOWN.split("$")[3:]


@pytest.mark.parametrize("text, problem", [
    ("", FORMAT),
    ("hunter2", FORMAT),
    ("$2b$12$abcdefghijklmnopqrstuv", FORMAT),  # bcrypt
    ("$scrypt$ln=10,r=8$c2FsdA$a2V5", FORMAT),
    ("$scrypt$ln=10,r=8,p=1$c2FsdA", FORMAT),
    ("$scrypt$ln=10,r=8,p=1$c2F.sdA$a2V5", FORMAT),  # passlib's adapted base64
    (KNOWN + "$extra", FORMAT),
    (KNOWN.replace("ln=10", "ln=9"), RANGE),
    (KNOWN.replace("ln=10", "ln=21"), RANGE),
    (KNOWN.replace("r=8", "r=0"), RANGE),
    (KNOWN.replace("r=8", "r=33"), RANGE),
    (KNOWN.replace("p=1", "p=0"), RANGE),
    (KNOWN.replace("p=1", "p=17"), RANGE),
    ("$scrypt$ln=10,r=8,p=1$a$" + GOOD_PARTS[1], BASE64),  # one base64 character is no byte
    ("$scrypt$ln=10,r=8,p=1$" + GOOD_PARTS[0] + "$ab=c", BASE64),
    ("$scrypt$ln=10,r=8,p=1$" + GOOD_PARTS[0] + "$abcde", BASE64),
])
def test_malformed_hashes_say_what_is_wrong(text, problem):
    assert check_hash_format(text) == problem


@pytest.mark.parametrize("text", [
    "", "hunter2", "$scrypt$ln=10,r=8,p=1$a$a", "$scrypt$ln=10,r=8,p=1$ab=c$ab=c", KNOWN[:-5] + "$",
    KNOWN.replace(GOOD_PARTS[1], "AAAA"),  # well formed, but a 3-byte key never matches
])
def test_verifying_against_a_malformed_hash_is_false_not_an_exception(text):
    assert verify_password("pw", text) is False


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    assert not verify_password("wrong", KNOWN)
    assert calls == [(32, 32)]


# -- Verifier: off the loop, unknown users cost the same, a cache of verified logins -------------

class Spy:
    """Counts verify_password calls and the threads they ran on."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        self.threads: set[str] = set()
        real = passwords.verify_password

        def spy(password: str, stored: str) -> bool:
            self.calls.append((password, stored))
            self.threads.add(threading.current_thread().name)
            return real(password, stored)

        monkeypatch.setattr(passwords, "verify_password", spy)


@pytest.fixture
def spy(monkeypatch) -> Spy:
    dummy = hash_password("relay365-no-such-user", ln=10)
    monkeypatch.setattr(passwords, "_dummy_hash", lambda: dummy)
    return Spy(monkeypatch)


def run(verifier: Verifier, user: str, password: str) -> bool:
    return asyncio.run(verifier.verify(user, Secret(password)))


def test_verifier_checks_off_the_event_loop(spy):
    v = Verifier({"scanner": Secret(KNOWN)})
    assert run(v, "scanner", "pw") is True
    assert run(v, "scanner", "nope") is False
    assert spy.calls == [("pw", KNOWN), ("nope", KNOWN)]
    assert threading.current_thread().name not in spy.threads  # asyncio.to_thread, never the loop


def test_unknown_user_pays_for_a_dummy_hash_and_fails(spy):
    v = Verifier({"scanner": Secret(KNOWN)})
    assert run(v, "ghost", "pw") is False
    assert run(v, "ghost", "relay365-no-such-user") is False  # even the dummy's own password
    assert [stored for _, stored in spy.calls] == [passwords._dummy_hash()] * 2


def test_a_verified_login_is_cached_and_a_wrong_one_is_not(spy):
    v = Verifier({"scanner": Secret(KNOWN), "other": Secret(KNOWN)})
    assert run(v, "scanner", "pw") and run(v, "scanner", "pw") and run(v, "scanner", "pw")
    assert len(spy.calls) == 1  # one scrypt, then one HMAC per login
    assert not run(v, "scanner", "pW")  # a wrong password still pays the full price ...
    assert run(v, "scanner", "pw")  # ... and does not evict the right one
    assert run(v, "other", "pw")  # the cache is per user
    assert len(spy.calls) == 3
    assert all(len(fp) == 32 and b"pw" not in fp for fp in v._verified.values())  # nothing reversible


def test_the_cache_is_bounded(spy, monkeypatch):
    monkeypatch.setattr(passwords, "_MAX_CACHE", 2)
    v = Verifier({u: Secret(KNOWN) for u in ("a", "b", "c")})
    for u in ("a", "b", "c"):
        assert run(v, u, "pw")
    assert list(v._verified) == ["b", "c"]


def test_a_changed_hash_is_not_satisfied_by_the_cache(spy):
    v = Verifier({"scanner": Secret(KNOWN)})
    assert run(v, "scanner", "pw")
    v._hashes["scanner"] = Secret(hash_password("new", ln=10))  # what a reload amounts to
    assert not run(v, "scanner", "pw") and run(v, "scanner", "new")


def test_logins_that_arrive_together_share_one_scrypt(spy):
    """After an upstream restart every client logs in again at once (the soak: 1,000): the same
    credentials are checked once, not once per client."""
    v = Verifier({"scanner": Secret(KNOWN)})

    async def storm() -> list[bool]:
        right = [v.verify("scanner", Secret("pw")) for _ in range(50)]
        wrong = [v.verify("scanner", Secret("nope")) for _ in range(20)]
        return await asyncio.gather(*right, *wrong)

    results = asyncio.run(storm())
    assert results == [True] * 50 + [False] * 20
    assert sorted(spy.calls) == [("nope", KNOWN), ("pw", KNOWN)]
    assert not v._flights


def test_at_most_parallel_scrypts_run_at_once(monkeypatch, spy):
    monkeypatch.setattr(passwords, "PARALLEL", 2)
    v = Verifier({"scanner": Secret(KNOWN)})
    running, peak, lock = 0, 0, threading.Lock()
    real = passwords.verify_password

    def counting(password: str, stored: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real(password, stored)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(passwords, "verify_password", counting)

    async def distinct() -> list[bool]:
        return await asyncio.gather(*(v.verify("scanner", Secret(f"guess {i}")) for i in range(12)))

    assert asyncio.run(distinct()) == [False] * 12
    assert peak == 2


def test_a_cancelled_check_leaves_the_waiters_to_check_again(spy):
    v = Verifier({"scanner": Secret(KNOWN)})

    async def scene() -> bool:
        first = asyncio.create_task(v.verify("scanner", Secret("pw")))
        await asyncio.sleep(0)  # first holds the flight
        second = asyncio.create_task(v.verify("scanner", Secret("pw")))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert asyncio.run(scene()) is True
    assert not v._flights


def test_a_reload_keeps_verified_logins_unless_the_hash_changed(spy):
    v = Verifier({"scanner": Secret(KNOWN), "other": Secret(KNOWN)})
    assert run(v, "scanner", "pw") and run(v, "other", "pw")
    new = hash_password("new", ln=10)
    v.configure({"scanner": Secret(KNOWN), "other": Secret(new)})  # what SIGHUP does
    calls = len(spy.calls)
    assert run(v, "scanner", "pw") and len(spy.calls) == calls  # remembered: no scrypt
    assert not run(v, "other", "pw") and run(v, "other", "new")  # its hash changed
    v.configure({"other": Secret(new)})
    assert not run(v, "scanner", "pw")  # a user removed by the reload is gone
