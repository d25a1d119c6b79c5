"""genforge: from raw business data to a served, monitored generator."""

__version__ = "0.1.0"
