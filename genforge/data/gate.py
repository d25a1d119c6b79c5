"""The quality gate: configurable rules over a dataset's figures, pass or fail, with a report
a person can read in the terminal and that the manifest keeps.

Each modality reports the figures it has (`GateStats`); a rule whose figure is absent (no
classes, no columns) or whose limit is null is skipped and listed as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from genforge.data.options import GateOptions


@dataclass
class GateStats:
    n_examples: int
    per_class: dict[str, int] | None = None
    duplicate_share: float | None = None
    unreadable_share: float | None = None
    min_resolution: int | None = None
    missing_share: dict[str, float] | None = None
    length_violation_share: float | None = None


@dataclass
class RuleResult:
    rule: str
    figure: Any
    limit: Any
    passed: bool | None  # None: not applicable / switched off
    detail: str = ""


@dataclass
class GateReport:
    rules: list[RuleResult] = field(default_factory=list)
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.passed is False]

    def to_json(self) -> dict:
        return {"passed": self.passed, "forced": self.forced,
                "rules": [r.__dict__ for r in self.rules]}

    def summary(self) -> str:
        """One line per failed rule, for the error a failed gate raises."""
        return "\n".join(f"  {r.rule}: {r.detail}" for r in self.failed)

    def table(self) -> Table:
        t = Table(title="quality gate: " + ("PASSED" if self.passed else "FAILED (forced)" if self.forced else "FAILED"))
        for col in ("rule", "figure", "limit", "result"):
            t.add_column(col)
        for r in self.rules:
            res = "[green]pass[/]" if r.passed else "[red]FAIL[/]" if r.passed is False else "[dim]n/a[/]"
            t.add_row(r.rule, _fmt(r.figure), _fmt(r.limit), res)
        return t


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _check(rule: str, figure, limit, ok, detail: str) -> RuleResult:
    if figure is None or limit is None:
        return RuleResult(rule, figure, limit, None, "not applicable" if figure is None else "switched off")
    passed = bool(ok(figure, limit))
    return RuleResult(rule, figure, limit, passed, "" if passed else detail.format(figure=_fmt(figure), limit=_fmt(limit)))


def _check_worst(rule: str, figures: dict[str, float] | None, limit, pick, ok, detail: str) -> RuleResult:
    """A per-item rule (per class, per column) judged on its worst item, which the detail names."""
    if not figures:
        return _check(rule, None, limit, ok, "")
    name = pick(figures, key=figures.get)
    return _check(rule, figures[name], limit, ok, detail.format(name=name))


def run_gate(stats: GateStats, opts: GateOptions, force: bool = False) -> GateReport:
    ge, le = (lambda f, l: f >= l), (lambda f, l: f <= l)
    rules = [
        _check("min_examples", stats.n_examples, opts.min_examples, ge, "{figure} examples, at least {limit} required"),
        _check("max_duplicate_share", stats.duplicate_share, opts.max_duplicate_share, le, "{figure} of the input were duplicates, at most {limit} allowed"),
        _check("max_unreadable_share", stats.unreadable_share, opts.max_unreadable_share, le, "{figure} of the input was unreadable, at most {limit} allowed"),
        _check("min_resolution", stats.min_resolution, opts.min_resolution, ge, "smallest image side is {figure} px, at least {limit} required"),
        _check("max_length_violation_share", stats.length_violation_share, opts.max_length_violation_share, le, "{figure} of the texts were outside the length bounds, at most {limit} allowed"),
    ]
    rules.append(_check_worst("min_per_class", stats.per_class, opts.min_per_class, min, ge,
                              "class {name!r} has {{figure}} examples, at least {{limit}} required"))
    rules.append(_check_worst("max_missing_share", stats.missing_share, opts.max_missing_share, max, le,
                              "column {name!r} is {{figure}} missing, at most {{limit}} allowed"))
    return GateReport(rules=rules, forced=force)
