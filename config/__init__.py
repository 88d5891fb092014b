"""Configuration: command-line options and environment -> one frozen Config."""

from config.options import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
