"""The terminal views of the registry: `genforge models` and `genforge history`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

# The figures `genforge models` shows when a version has them: the headline of each kind of evaluation.
HEADLINE = ("evaluator_fd", "evaluator_conditional_accuracy", "perplexity", "label_agreement", "fid")


def print_models(models: list[dict[str, Any]], console: Console, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([{**m, "versions": [asdict(v) for v in m["versions"]]} for m in models], indent=1))
        return
    if not models:
        console.print("no registered models; register one with `genforge register RUN --name NAME`")
        return
    for m in models:
        shown = [k for k in HEADLINE if any(k in v.metrics for v in m["versions"])]
        t = Table(title=f"{m['name']}  (aliases: {', '.join(f'{a} -> v{v}' for a, v in m['aliases'].items()) or 'none'})")
        for col in ("version", "aliases", "run", "dataset", *shown):
            t.add_column(col)
        for v in m["versions"]:
            t.add_row(v.version, ", ".join(v.aliases), v.run, v.evaluation.get("dataset", "-"),
                      *(f"{v.metrics[k]:.4g}" if k in v.metrics else "-" for k in shown))
        console.print(t)


def print_history(entries: list[dict[str, Any]], name: str, console: Console, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(entries, indent=1))
        return
    t = Table(title=f"promotion history of {name}")
    for col in ("#", "at", "by", "action", "from", "to", "reason", "figures", "failed rules"):
        t.add_column(col)
    for e in entries:
        figures = "; ".join(f"{k} {f['value']:.4g}" + (f" (champion {f['champion']:.4g})" if f.get("champion") is not None
                                                        else "")
                            for k, f in (e.get("figures") or {}).items() if f.get("value") is not None)
        t.add_row(str(e.get("seq")), e.get("at", ""), e.get("by", ""), e.get("action", ""), str(e.get("from") or "-"),
                  str(e.get("to") or "-"), e.get("reason") or "", figures, "; ".join(e.get("failed") or []))
    console.print(t)
