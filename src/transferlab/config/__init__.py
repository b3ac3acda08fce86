"""Configuration: the typed schema (the one source of defaults) and the override check.

Imports nothing of the other layers: Hydra and OmegaConf only.
"""

from transferlab.config.overrides import check_override_keys, hydra_overrides
from transferlab.config.schema import Config, ConfigError, register, schema_keys

__all__ = ["Config", "ConfigError", "check_override_keys", "hydra_overrides", "register",
           "schema_keys"]
