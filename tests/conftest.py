"""Every test gets its own empty workspace, so tests never see each other's datasets or runs."""

import pytest


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    home = tmp_path / "ws"
    monkeypatch.setenv("GENFORGE_HOME", str(home))
    return home
