"""The configuration's error type, apart so that every study module can raise it (the config
module itself imports the method registry, which raises it too)."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""
