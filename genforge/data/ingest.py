"""One ingest for every kind of data: resolve the source, let the modality clean, split and
write it, run the quality gate, then publish a content-addressed version (or refuse to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genforge.data.gate import GateReport, run_gate
from genforge.data.options import IngestConfig
from genforge.data.prepared import Prepared, source_info  # noqa: F401  (source_info: re-exported for old callers)
from genforge.config import deep_merge, validate
from genforge.data.sources import builtin_defaults, detect_kind
from genforge.data.store import DatasetManifest, DatasetWriter
from genforge.errors import GateError
from genforge.workspace import atomic_write_json, datasets_dir


@dataclass
class IngestResult:
    manifest: DatasetManifest
    created: bool  # False: identical data was already ingested under this version
    gate: GateReport


def _prepare(kind: str, source: str, cfg: IngestConfig, writer: DatasetWriter) -> Prepared:
    # Imported here so that reading a dataset never pays for decoders it does not need.
    if kind == "image":
        from genforge.data.images import prepare_images

        return prepare_images(source, cfg, writer)
    if kind == "text":
        from genforge.data.text import prepare_text

        return prepare_text(source, cfg, writer)
    from genforge.data.table import prepare_table

    return prepare_table(source, cfg, writer)


def ingest(source: str, name: str, cfg: IngestConfig | None = None, force: bool = False,
           lineage: dict[str, Any] | None = None) -> IngestResult:
    """Ingest `source` (a folder, a file or `builtin:<name>`) as dataset `name`.

    `lineage`: where the data came from beyond its source file (a feedback export's model versions and
    generation ids), kept in the manifest as it is given.

    Raises GateError naming each failed rule unless `force`; the rejected attempt's full report
    is kept in `datasets/<name>/rejected.json` so nothing the cleaning found is lost.
    """
    # A built-in's own settings sit under whatever the user set explicitly.
    cfg = validate(IngestConfig, deep_merge(builtin_defaults(source), (cfg or IngestConfig()).model_dump(exclude_unset=True)))
    kind = detect_kind(source, cfg.kind)
    writer = DatasetWriter(name, kind)  # type: ignore[arg-type]
    try:
        prep = _prepare(kind, source, cfg, writer)
        report = run_gate(prep.gate_stats, cfg.gate, force=force)
        fields = dict(source=prep.source, counts=prep.counts, schema=prep.schema, classes=prep.classes,
                      split=prep.split, cleaning=prep.cleaning, gate=report.to_json(),
                      config=cfg.model_dump(mode="json"), **({"lineage": lineage} if lineage else {}))
        if not report.passed and not force:
            atomic_write_json(datasets_dir() / name / "rejected.json", {"name": name, **fields})
            raise GateError(f"dataset {name!r} failed the quality gate:\n{report.summary()}\n"
                            f"(full report: {datasets_dir() / name / 'rejected.json'}; --force overrides and is recorded)")
        manifest, created = writer.commit(**fields)
    except BaseException:
        writer.abort()
        raise
    return IngestResult(manifest, created, report)
