"""Configs at the edge: strict keys, typed values, overrides, atomic writes."""

import json
import os
from pathlib import Path

import pytest

from genforge.config import apply_overrides, load_config
from genforge.data.options import IngestConfig
from genforge.errors import ConfigError
from genforge.workspace import atomic_write_bytes, atomic_write_json, home


def test_unknown_key_names_key_and_allowed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("image:\n  szie: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(IngestConfig, p)
    msg = str(e.value)
    assert "unknown key 'image.szie'" in msg and "size" in msg and "near_duplicate_hamming" in msg


def test_wrong_type_and_range_are_errors():
    with pytest.raises(ConfigError, match="image.size"):
        load_config(IngestConfig, None, ["image.size=big"])
    with pytest.raises(ConfigError, match="image.size"):
        load_config(IngestConfig, None, ["image.size=4"])
    with pytest.raises(ConfigError, match="val \\+ test"):
        load_config(IngestConfig, None, ["split.val=0.6", "split.test=0.5"])


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("image:\n  size: 64\n")
    cfg = load_config(IngestConfig, p, ["image.size=28", "gate.min_examples=null", "pii.redact=true", "table.types={a: id}"])
    assert cfg.image.size == 28 and cfg.gate.min_examples is None and cfg.pii.redact and cfg.table.types == {"a": "id"}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["image.size"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(IngestConfig, tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("image: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(IngestConfig, p)


def test_workspace_follows_env(workspace):
    assert home() == Path(workspace).resolve()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    """A write that dies before the rename keeps the previous complete file and no temporaries."""
    target = tmp_path / "f.json"
    atomic_write_json(target, {"a": 1})

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"partial")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_gives_normal_file_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    p = atomic_write_bytes(tmp_path / "report.html", b"x")
    assert (p.stat().st_mode & 0o777) == 0o666 & ~umask
