"""A rotated refresh token the token store could not take yet (state_dir read-only or full).

It is the newest token of its mailbox - the identity platform may already have retired the one
on disk - so the manager redeems from it and keeps trying to store it. `expect` stays what is
on disk (the compare-and-swap of the eventual `put`), however often it rotates in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..secret import Secret
from .store import StoreError, TokenStore


@dataclass(frozen=True)
class Pending:
    token: Secret
    expect: Secret | None  # the token on disk it replaces
    check_expect: bool  # False when it descends from a new config seed (which wins)
    seed_fingerprint: str | None
    public: bool

    def rotated(self, token: Secret) -> Pending:
        """Redeemed again while still unsaved: the newer token replaces the same one on disk."""
        return replace(self, token=token)

    def save(self, store: TokenStore, mailbox: str) -> bool:
        """Store it (StoreError when state_dir still refuses). False: someone stored another
        token meanwhile (`relay365 auth`): theirs is newer and stays."""
        return store.put(mailbox, self.token, expect=self.expect, check_expect=self.check_expect,
                         seed_fingerprint=self.seed_fingerprint, public=self.public)

    def try_save(self, store: TokenStore, mailbox: str) -> str | None:
        """"stored", "superseded" (another token won), or None while state_dir still refuses."""
        try:
            return "stored" if self.save(store, mailbox) else "superseded"
        except StoreError:
            return None
