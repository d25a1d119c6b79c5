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
