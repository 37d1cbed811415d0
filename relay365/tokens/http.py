"""The requests session msal talks through: our CA policy and a timeout, whatever the environment says.

requests lets `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` replace a session's `verify`, which would make the
app's `ca_file` silently useless (and those variables are set on many machines). This session keeps
its own trust (`relay365.tlsutil.https_context`, shared with the relay's other HTTPS clients)
and still honours proxy variables.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter

from ..tlsutil import https_context

if TYPE_CHECKING:  # a TypedDict that only exists in types-requests
    from requests.sessions import _Settings


class _TLSAdapter(HTTPAdapter):
    def __init__(self, ca_file: Path | None) -> None:
        self._ctx = https_context(ca_file)
        super().__init__(max_retries=0)

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        """requests names certifi's bundle as `ca_certs` for `verify=True`, and urllib3 then
        loads it into our context again on every new connection (~5 ms, and the shared context
        grows): the context already holds certifi and the CA file, so trust stays as it is."""
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # untyped in the stubs
        conn.ca_certs = conn.ca_cert_dir = None

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:  # Any: urllib3's PoolManager keywords
        pool_kwargs["ssl_context"] = self._ctx
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:  # Any: as in the stubs
        proxy_kwargs["ssl_context"] = self._ctx
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class TokenHTTPSession(requests.Session):
    def __init__(self, ca_file: Path | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        self.verify = True
        self._timeout = timeout
        self.mount("https://", _TLSAdapter(ca_file))

    def request(self, method: str | bytes, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:  # Any: passed on to requests as they came
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(self, url: str | bytes | None,
                                   proxies: MutableMapping[str, str] | None, stream: bool | None,
                                   verify: bool | str | None,
                                   cert: str | tuple[str, str] | None) -> _Settings:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = True  # our adapter's context decides trust, not the environment
        return settings
