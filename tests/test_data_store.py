"""Versioned, content-addressed datasets: one version per content, list/show, integrity, no leftovers."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import _app
from genforge.config import load_config
from genforge.data.ingest import ingest
from genforge.data.options import IngestConfig
from genforge.data.store import check_name, list_datasets, open_dataset
from genforge.errors import DataError

FAST = ["image.workers=1", "image.size=16", "gate.min_examples=1", "gate.min_per_class=1"]


def blocks_folder(root: Path, per_class: int = 6, classes=("a", "b"), seed: int = 0) -> Path:
    """Distinct images: random 6x6 colour blocks scaled up to 24x24, one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
            Image.fromarray(a).save(root / c / f"{k}.png")
    return root


def cfg(*extra: str) -> IngestConfig:
    return load_config(IngestConfig, None, FAST + list(extra))


def test_version_is_the_content_hash_and_files_are_verified(tmp_path, workspace):
    res = ingest(str(blocks_folder(tmp_path / "f")), "blocks", cfg())
    m = res.manifest
    assert res.created and m.version == m.content_hash[:12] and m.ref == f"blocks@{m.version}"
    root = Path(workspace) / "datasets" / "blocks" / m.version
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk["format"] == "genforge-dataset/1" and on_disk["version"] == m.version
    assert sorted(f["path"] for f in m.files) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors"))
    ds = open_dataset("blocks")
    assert ds.verify() == []
    shard = root / m.files[0]["path"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    assert ds.verify() == [m.files[0]["path"]]
    assert [p.name for p in (Path(workspace) / "datasets" / "blocks").iterdir()] == [m.version]  # no temporaries left


def test_same_data_same_version_new_data_new_version(tmp_path):
    folder = blocks_folder(tmp_path / "f")
    first = ingest(str(folder), "blocks", cfg())
    again = ingest(str(folder), "blocks", cfg())
    assert not again.created and again.manifest.version == first.manifest.version
    assert [m.ref for m in list_datasets()] == [first.manifest.ref]
    blocks_folder(folder, per_class=1, classes=("c",), seed=1)
    second = ingest(str(folder), "blocks", cfg())
    assert second.created and second.manifest.version != first.manifest.version
    assert len(list_datasets()) == 2 and open_dataset("blocks").version == second.manifest.version  # latest
    assert open_dataset(f"blocks@{first.manifest.version[:6]}").version == first.manifest.version
    with pytest.raises(DataError, match="versions: "):
        open_dataset("blocks@ffffffffff")


def test_other_settings_give_another_version_and_latest_is_the_newest(tmp_path):
    folder = blocks_folder(tmp_path / "f")
    a = ingest(str(folder), "blocks", cfg("split.seed=2"))
    b = ingest(str(folder), "blocks", cfg("split.seed=1"))  # within the same second; its version sorts first
    assert b.created and a.manifest.version > b.manifest.version
    assert open_dataset("blocks").version == open_dataset("blocks@latest").version == b.manifest.version


def test_unknown_and_bad_names_are_clear_errors(tmp_path):
    ingest(str(blocks_folder(tmp_path / "f")), "blocks", cfg())
    with pytest.raises(DataError, match=r"no dataset named 'nope' \(known: blocks\)"):
        open_dataset("nope")
    for bad in ("", "../x", ".hidden", "a b"):
        with pytest.raises(DataError, match="dataset name"):
            check_name(bad)


def test_cli_ingest_list_show(tmp_path):
    folder = blocks_folder(tmp_path / "f")
    run = CliRunner().invoke
    args = ["data", "ingest", str(folder), "--name", "blocks"] + [x for s in FAST for x in ("--set", s)]
    first = run(_app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    version = open_dataset("blocks").version
    assert f"blocks@{version}" in first.output and "new version" in first.output and "PASSED" in first.output
    second = run(_app, args, env={"COLUMNS": "200"})
    assert second.exit_code == 0 and f"blocks@{version} (identical data already ingested: same version)" in second.output

    listed = run(_app, ["data", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and f"blocks@{version}" in listed.output and listed.output.count("blocks@") == 1
    shown = run(_app, ["data", "show", f"blocks@{version}"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "kept=12" in shown.output and "split sizes: train=" in shown.output
    as_json = run(_app, ["data", "show", "blocks", "--json"], env={"COLUMNS": "200"})
    assert json.loads(as_json.output) == open_dataset("blocks").manifest.to_json()
