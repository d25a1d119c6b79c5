"""The few user-facing exception types. The CLI prints them without a traceback and exits 1."""


class GenforgeError(Exception):
    """Base for errors caused by user input or state, with a message saying what to do."""


class ConfigError(GenforgeError):
    """A config file, override or option is invalid."""


class DataError(GenforgeError):
    """Input data is missing, unreadable or fails a check."""


class GateError(DataError):
    """A dataset failed its quality gate (the report says which rules)."""


class ModelError(GenforgeError):
    """A model cannot be built, loaded or asked for what it was given."""


class CheckpointError(GenforgeError):
    """A checkpoint is missing, damaged or does not match the run."""


class RegistryError(GenforgeError):
    """A registry operation that cannot be done as asked (unknown model or version, nothing to roll back to)."""


class PromotionRefused(GenforgeError):
    """The promotion policy failed; the message lists every failed rule with its figures."""

    def __init__(self, name: str, version: str, failures: list[str]):
        self.failures = failures
        super().__init__(f"version {version} of {name} is not promoted: " + "; ".join(failures)
                         + ' (override with --force --reason "...")')
