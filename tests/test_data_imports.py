"""The data package has no import cycles: ingest.py dispatches to the modalities (images, text,
table), and they take their shared types from the leaf module prepared.py, never from ingest.py."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "genforge" / "data"
MODALITIES = ["images", "text", "table"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (top level or inside functions), as full dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against genforge.data
                parts = ["genforge", "data"][: max(0, 3 - node.level)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from genforge.data import ingest`
    return names


@pytest.mark.parametrize("module", MODALITIES)
def test_modalities_never_import_ingest(module):
    imports = imported_modules(DATA / f"{module}.py")
    assert "genforge.data.ingest" not in imports, f"genforge/data/{module}.py imports genforge.data.ingest (import cycle)"
    assert "genforge.data.prepared" in imports


def test_prepared_is_a_leaf():
    imports = imported_modules(DATA / "prepared.py")
    banned = {f"genforge.data.{m}" for m in ["ingest", *MODALITIES]}
    assert not imports & banned, f"genforge/data/prepared.py must stay a leaf, imports {sorted(imports & banned)}"


def test_importing_a_modality_does_not_load_ingest():
    code = ("import sys\n"
            "import genforge.data.images, genforge.data.text, genforge.data.table\n"
            "print('genforge.data.ingest' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_ingest_still_offers_the_shared_types():
    from genforge.data import ingest, prepared

    assert ingest.Prepared is prepared.Prepared and ingest.source_info is prepared.source_info
