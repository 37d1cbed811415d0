"""The requests session msal talks through: our CA policy and a timeout, whatever the environment says.

requests lets `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` replace a session's `verify`, which would make the
app's `ca_file` silently useless (and those variables are set on many machines). This session keeps
its own trust (`relay365.tlsutil.client_context`) and still honours proxy variables.
"""

from __future__ import annotations

from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from ..tlsutil import client_context


class _TLSAdapter(HTTPAdapter):
    def __init__(self, ca_file: Path | None) -> None:
        self._ctx = client_context(ca_file)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._ctx
        return super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args, **kwargs):
        kwargs["ssl_context"] = self._ctx
        return super().proxy_manager_for(*args, **kwargs)


class TokenHTTPSession(requests.Session):
    def __init__(self, ca_file: Path | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        self.verify = True
        self._timeout = timeout
        self.mount("https://", _TLSAdapter(ca_file))

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = True  # our adapter's context decides trust, not the environment
        return settings
