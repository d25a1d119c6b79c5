"""`python -m genforge`: the same as the `genforge` command."""

from genforge.cli import app

app()
