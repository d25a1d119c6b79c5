"""Run a genforge CLI command in-process, as a user would type it, failing loudly."""

from typer.testing import CliRunner

from genforge.cli import _app


def invoke(*args: str):
    """The result of `genforge ARGS`; an exception inside the command is raised, a non-zero exit fails."""
    result = CliRunner().invoke(_app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result
