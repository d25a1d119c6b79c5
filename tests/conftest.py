"""Every test gets its own empty workspace, so tests never see each other's datasets or runs.

MLflow tracking is off unless a test turns it on (GENFORGE_TRACKING=on): training tests should not
pay for a database they do not look at, and no test may write to a user's MLFLOW_TRACKING_URI."""

import pytest


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    home = tmp_path / "ws"
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    monkeypatch.setenv("GENFORGE_TRACKING", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
