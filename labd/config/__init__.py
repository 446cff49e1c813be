"""labd's configuration: its settings sections and their loading.

- `labd.config.settings`: the sections, their defaults and their checks.
- `labd.config.loading`: reading the YAML file and ``LABD_*`` variables into
  a `Config`, with every problem named.

The names below are the package's public face: import them from
``labd.config``.
"""

from labd.config.loading import ConfigError, ConfigProblem, load_config
from labd.config.settings import (
    DEFAULT_EPHEMERAL_STORAGE_LIMIT,
    DEFAULT_EPHEMERAL_STORAGE_REQUEST,
    ENV_PREFIX,
    MAX_BYTES,
    MAX_CPU,
    MAX_DURATION,
    SERVICE_ACCOUNT_NAMESPACE_FILE,
    AlertsConfig,
    Config,
    CopiedSecretConfig,
    EgressConfig,
    EgressRuleConfig,
    GroupConfig,
    HttpConfig,
    ImageClass,
    ImageConfig,
    ImagesConfig,
    KubernetesConfig,
    LabConfig,
    QuotaConfig,
    RegistryConfig,
    Resources,
    RetryConfig,
    SizeConfig,
    TimeoutsConfig,
    UserConfig,
    UsersConfig,
    VolumeConfig,
    read_webhook_url,
)

__all__ = [
    "DEFAULT_EPHEMERAL_STORAGE_LIMIT",
    "DEFAULT_EPHEMERAL_STORAGE_REQUEST",
    "ENV_PREFIX",
    "MAX_BYTES",
    "MAX_CPU",
    "MAX_DURATION",
    "SERVICE_ACCOUNT_NAMESPACE_FILE",
    "AlertsConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "CopiedSecretConfig",
    "EgressConfig",
    "EgressRuleConfig",
    "GroupConfig",
    "HttpConfig",
    "ImageClass",
    "ImageConfig",
    "ImagesConfig",
    "KubernetesConfig",
    "LabConfig",
    "QuotaConfig",
    "RegistryConfig",
    "Resources",
    "RetryConfig",
    "SizeConfig",
    "TimeoutsConfig",
    "UserConfig",
    "UsersConfig",
    "VolumeConfig",
    "load_config",
    "read_webhook_url",
]
