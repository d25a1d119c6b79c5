"""`genforge serve`: the config (a file, or every registered model's champion), then uvicorn with
one process or several. Several workers share the key store and rate limits (one sqlite file,
`keys.py`) and sum their metrics (prometheus multiprocess mode); each loads its own models."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from genforge.errors import ConfigError
from genforge.serve.config import ServeConfig, load_serve_config


def resolve_config(path: Path | None, overrides: list[str]) -> tuple[ServeConfig, dict]:
    """The config, and how a worker process rebuilds it (the same file and overrides, or the model list)."""
    if path is not None:
        return load_serve_config(path, overrides), {"path": str(path), "overrides": overrides}
    from genforge import registry
    names = [m["name"] for m in registry.models() if m["aliases"].get(registry.CHAMPION)]
    if not names:
        raise ConfigError("no registered model has a champion to serve: run `genforge run CONFIG` (or register and "
                          "promote a run), or give a serve config with --config")
    cfg = load_serve_config(None, [f"models={json.dumps([{'name': n, 'registry': n} for n in names])}", *overrides])
    return cfg, {"path": None, "overrides": [f"models={json.dumps([m.model_dump() for m in cfg.models])}",
                                             *overrides]}


def passive_openmp() -> None:
    """Re-run this command once with OMP_WAIT_POLICY=PASSIVE unless the variable is set.

    Between two decoding steps the server's event loop has Python work to do; OpenMP's worker threads,
    by default, spin after each parallel region and take the cores from it. Sleeping at once costs a
    kernel a little wake-up latency and gives the event loop its core back (measured in
    benchmarks/bench_serve.py). OpenMP reads the variable when torch loads, which has happened by
    now: hence the re-execution, before any model is loaded or port opened."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, "-m", "genforge", *sys.argv[1:]])


def serve(path: Path | None, overrides: list[str]) -> None:
    import uvicorn

    from genforge.serve.app import CONFIG_ENV, create_app
    cfg, spec = resolve_config(path, overrides)
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
        return
    metrics_dir = tempfile.mkdtemp(prefix="genforge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus_client
    os.environ[CONFIG_ENV] = json.dumps(spec)
    try:
        uvicorn.run("genforge.serve.app:app_from_env", factory=True, host=cfg.host, port=cfg.port,
                    workers=cfg.workers, log_level="warning", access_log=False)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)

