"""The one place msal is called. Its error dicts and exceptions become `TokenError`s here.

msal is synchronous: callers run this in a worker thread. A fresh msal application (and token
cache) per call keeps msal's own cache from answering in place of the identity platform; the HTTP
cache (openid discovery) is shared per app and dropped after any failure, because msal replays an
identical failed request from it for 60 s and would hide a recovery.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import msal  # untyped: its classes are Any to mypy, so the types below are where ours begin
import requests

from ..config import AppConfig
from .classify import classify, network_error, service_error
from .http import TokenHTTPSession

# msal's HTTP cache: request keys (strings) to whatever msal keeps for them
HttpCache = MutableMapping[str, object]
# what msal returns from a token call: the endpoint's JSON object (msal adds a few keys)
MsalResult = dict[str, object]


def build_app(app_cfg: AppConfig, session: TokenHTTPSession, http_cache: HttpCache,
              public: bool = False) -> msal.ClientApplication:
    """msal's application for `app_cfg`. `public`: a public client even when the app has a
    secret - a token from a public flow (device code) must be refreshed that way (AADSTS700025)."""
    kwargs: dict[str, object] = dict(
        authority=app_cfg.authority_url, instance_discovery=False, http_client=session,
        http_cache=http_cache, token_cache=msal.TokenCache())
    if app_cfg.client_secret and not public:
        return msal.ConfidentialClientApplication(
            app_cfg.client_id, client_credential=app_cfg.client_secret.reveal(), **kwargs)
    return msal.PublicClientApplication(app_cfg.client_id, **kwargs)


def call_msal(account: str, app_cfg: AppConfig, session: TokenHTTPSession, http_cache: HttpCache,
              call: Callable[[msal.ClientApplication], object],
              public: bool = False) -> MsalResult:
    """Run `call(msal_app)`; return a result with an access token or raise TokenError."""
    try:
        result = call(build_app(app_cfg, session, http_cache, public))
    except (requests.RequestException, OSError) as exc:
        http_cache.clear()
        raise network_error(account, exc) from None
    except (ValueError, msal.exceptions.MsalServiceError) as exc:
        # msal raises on a 5xx or an unparseable answer: the service is in trouble, retry later
        http_cache.clear()
        raise service_error(account, exc) from None
    if not isinstance(result, dict) or "access_token" not in result:
        http_cache.clear()
        raise classify(account, result if isinstance(result, dict) else {})
    return result
