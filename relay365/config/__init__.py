"""The one configuration model, and how it is loaded.

- `model` and `services`: every setting as a field of a frozen dataclass, with its default;
- `units`: the value types (sizes, durations, listen addresses, networks);
- `loader`: typed YAML loading with the key path and line of every problem;
- `load`: `load_config(path)`, the cross-checks and the defaults that depend on other keys.

Everything else imports from here: `from relay365.config import Config, load_config`.
"""

from .alerts import AlertsConfig, WebhookConfig
from .load import load_config
from .model import (
                    CLOUD_GRAPH_HOSTS,
                    CLOUD_MAIL_HOSTS,
                    CLOUDS,
                    DELEGATED_SCOPES,
                    AccountConfig,
                    AppConfig,
                    Config,
                    Endpoint,
                    GraphConfig,
                    LogConfig,
                    UpstreamConfig,
)
from .services import (
                    HttpConfig,
                    ImapConfig,
                    LimitsConfig,
                    Pop3Config,
                    SmtpConfig,
                    SpoolConfig,
                    UnauthenticatedNet,
                    UserConfig,
)
from .units import ListenAddr, parse_duration, parse_listen, parse_network, parse_size

__all__ = [
    "CLOUDS", "CLOUD_GRAPH_HOSTS", "CLOUD_MAIL_HOSTS", "DELEGATED_SCOPES", "AccountConfig",
    "AlertsConfig", "AppConfig", "Config", "Endpoint", "GraphConfig", "HttpConfig", "ImapConfig",
    "LimitsConfig", "ListenAddr", "LogConfig", "Pop3Config", "SmtpConfig",
    "SpoolConfig", "UnauthenticatedNet", "UpstreamConfig", "UserConfig", "WebhookConfig", "load_config",
    "parse_duration", "parse_listen", "parse_network", "parse_size",
]
