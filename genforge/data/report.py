"""Terminal views of datasets (rich): what ingest did, what versions exist, one manifest."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from genforge.data.gate import GateReport, RuleResult
from genforge.data.store import DatasetManifest

out = Console()


def _gate_from_json(g: dict) -> GateReport:
    return GateReport(rules=[RuleResult(**r) for r in g.get("rules", [])], forced=g.get("forced", False))


def _brief(value):
    """A cleaning entry in a few characters: a decision list ({"count": n, "items": [...]}, or
    {"found": n, ...} for PII) by its count, other lists and dicts by their length."""
    if isinstance(value, dict):
        return next((value[k] for k in ("count", "found") if k in value), len(value))
    return len(value) if isinstance(value, list) else value


def _cleaning_lines(cleaning: dict) -> list[str]:
    """One line per cleaning decision type, with its count."""
    lines = []
    for key, value in cleaning.items():
        if isinstance(value, dict) and "count" in value:
            extras = [f"{k}={v}" for k, v in value.items() if k not in ("count", "rule") and not isinstance(v, (list, dict))]
            lines.append(f"{key}: {value['count']}" + (f" ({', '.join(extras)})" if extras else ""))
        elif isinstance(value, dict):
            lines.append(f"{key}: " + ", ".join(f"{k}={_brief(v)}" for k, v in value.items()))
        else:
            lines.append(f"{key}: {_brief(value)}")
    return lines


def print_manifest(m: DatasetManifest, as_json: bool = False) -> None:
    if as_json:
        out.print_json(json.dumps(m.to_json(), ensure_ascii=False))
        return
    out.print(f"[bold]{m.ref}[/]  ({m.kind}, created {m.created_at})")
    out.print(f"source: {m.source.get('uri')}  {m.source.get('licence', '')}")
    out.print(f"content hash: {m.content_hash}")
    counts = {k: v for k, v in m.counts.items() if not isinstance(v, dict)}
    out.print("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if m.classes:
        t = Table(title="examples per class and split")
        t.add_column("class")
        for s in ("train", "val", "test"):
            t.add_column(s, justify="right")
        per = m.split.get("per_class", {})
        for c in m.classes:
            t.add_row(c, *(str(per.get(s, {}).get(c, 0)) for s in ("train", "val", "test")))
        out.print(t)
    out.print("split sizes: " + ", ".join(f"{k}={v}" for k, v in m.split.get("sizes", {}).items()))
    if m.data_schema:
        out.print("schema: " + json.dumps(m.data_schema, ensure_ascii=False)[:2000])
    out.print("cleaning: " + "; ".join(_cleaning_lines(m.cleaning)))
    out.print(_gate_from_json(m.gate).table())


def print_ingest(result) -> None:
    print_manifest(result.manifest)
    state = "new version" if result.created else "identical data already ingested: same version"
    out.print(f"[bold green]dataset {result.manifest.ref}[/] ({state})")


def print_list(manifests: list[DatasetManifest]) -> None:
    t = Table(title="datasets")
    for col in ("name@version", "kind", "examples", "classes", "gate", "created"):
        t.add_column(col)
    for m in manifests:
        gate = "pass" if m.gate.get("passed") else ("forced" if m.gate.get("forced") else "fail")
        t.add_row(m.ref, m.kind, str(m.counts.get("kept", "")), str(len(m.classes) or "-"), gate, m.created_at)
    out.print(t)
