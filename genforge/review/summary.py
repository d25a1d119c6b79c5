"""What a review found, with 95% confidence intervals, and where it is recorded.

Items, not ratings, are the units: each item's ratings are averaged first (several reviewers of one item are not
independent observations), then the items are averaged.
- Preference (pairs): a source's share of the choices, a tie counting half. Interval: Wilson's score interval with
  n = the items rated. Each item's value is a mean of 0, 1/2 and 1 outcomes, whose variance is at most p(1 - p),
  so the interval is exact for one rating per item and conservative beyond; unlike the normal approximation or a
  bootstrap, it does not shrink to a point when every choice agrees.
- Score (rubric): the mean of the items' mean scores (1-5). Interval: a percentile bootstrap over items (2000
  resamples, seed 0, so the same ratings always give the same interval); none for fewer than 2 rated items.
A review without ratings has null figures. `record` writes the figures as `human.*` metrics of each run reviewed:
into its evaluation (eval/metrics.json, so a later `genforge register` carries them) when that evaluation is of
the reviewed checkpoint, and onto every registered version made from that checkpoint (`registry.record_metrics`),
where a promotion policy may require them (`human.` figures are larger-is-better: genforge/registry.py).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from genforge.errors import ConfigError
from genforge.review.store import Rating, Review, ReviewStore, default_path
from genforge.workspace import atomic_write_json

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
BOOTSTRAP = 2000
INTERVALS = ("95% intervals: Wilson score interval over items (preference); percentile bootstrap over items, "
             f"{BOOTSTRAP} resamples, seed 0 (score)")


def wilson(p: float, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a share p of n."""
    centre, half = p + Z95 ** 2 / (2 * n), Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
    scale = 1 + Z95 ** 2 / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def bootstrap_mean(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of a mean, seeded: the same values always give the same interval."""
    means = values[np.random.default_rng(0).integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def _item_means(ratings: list[Rating], values: list[float]) -> np.ndarray:
    """The mean of each rated item's values (one value per rating)."""
    by_item: dict[str, list[float]] = defaultdict(list)
    for r, v in zip(ratings, values):
        by_item[r.item_id].append(v)
    return np.array([np.mean(v) for v in by_item.values()])


def summarise(store: ReviewStore, review: Review) -> dict[str, Any]:
    """GET /v1/reviews/{id}/summary's body (and `genforge review show`'s)."""
    ratings = store.ratings(review.id)
    out: dict[str, Any] = {
        "id": review.id, "object": "review.summary", "name": review.name, "mode": review.mode, "kind": review.kind,
        "ratings": len(ratings), "reviewers": len({r.key_id for r in ratings}),
        "items_rated": len({r.item_id for r in ratings}), "items": review.items, "intervals": INTERVALS}
    if review.mode == "rubric":
        scores = _item_means(ratings, [r.score for r in ratings])
        mean = float(scores.mean()) if len(scores) else None
        low, high = bootstrap_mean(scores) if len(scores) >= 2 else (None, None)
        histogram = {str(s): sum(r.score == s for r in ratings) for s in range(1, 6)}
        return {**out, "source": review.sources[0].label, "score": mean, "low": low, "high": high,
                "histogram": histogram}
    chosen = {i.id: {"a": i.source_a, "b": i.source_b} for i in store.items(review.id)}
    out["sources"] = []
    for index, source in enumerate(review.sources):
        points = [0.5 if r.choice == "tie" else float(chosen[r.item_id][r.choice] == index) for r in ratings]
        shares = _item_means(ratings, points)
        p = float(shares.mean()) if len(shares) else None
        low, high = wilson(p, len(shares)) if p is not None else (None, None)
        out["sources"].append({"source": source.label, "preference": p, "low": low, "high": high,
                               "wins": points.count(1.0), "losses": points.count(0.0), "ties": points.count(0.5)})
    return out


def figures(summary: dict[str, Any]) -> list[dict[str, float]]:
    """The `human.*` metrics of each source, in the review's source order ({} while it has no ratings; no interval
    from a single rated item)."""
    if summary["mode"] == "rubric":
        named = [{"human.score": summary["score"], "human.score_low": summary["low"],
                  "human.score_high": summary["high"], "human.ratings": summary["ratings"]}]
    else:
        named = [{"human.preference": s["preference"], "human.preference_low": s["low"],
                  "human.preference_high": s["high"], "human.ratings": s["wins"] + s["losses"] + s["ties"]}
                 for s in summary["sources"]]
    return [{k: v for k, v in figs.items() if v is not None} if summary["ratings"] else {} for figs in named]


def record(store: ReviewStore, review: Review) -> list[str]:
    """Write each reviewed run's figures where policies and reports read them; returns a line per place."""
    from genforge import registry
    from genforge.runs import load_run

    summary = summarise(store, review)
    if not summary["ratings"]:
        raise ConfigError(f"review {review.id} has no ratings yet: there is nothing to record")
    said = []
    for source, figs in zip(review.sources, figures(summary)):
        if source.run is None:
            continue
        run = load_run(source.run)
        path = run.path / "eval" / "metrics.json"
        evaluation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if evaluation is not None and evaluation.get("checkpoint") == source.checkpoint:
            for row in evaluation["rows"]:
                if row.get("kind") == "samples":
                    row.update(figs)
            atomic_write_json(path, evaluation)
            said.append(f"{run.id}: {_shown(figs)} in {path}")
        else:
            said.append(f"{run.id}: not written to its evaluation, which is not of the reviewed checkpoint "
                        f"{source.checkpoint} (evaluate it, then record again)")
        for version in _registered(run.id, source.checkpoint):
            registry.record_metrics(version.name, version.version, figs)
            said.append(f"{run.id}: {_shown(figs)} on {version.name} version {version.version}")
    return said


def _shown(figs: dict[str, float]) -> str:
    return ", ".join(f"{k} = {v:.4g}" for k, v in figs.items())


def _registered(run_id: str, checkpoint: str | None) -> list[Any]:
    """Registered versions made from the run's checkpoint; none (and no MLflow database made) when the registry is
    a sqlite file that does not exist yet."""
    from genforge import registry
    from genforge.tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    return [v for m in registry.models() for v in m["versions"]
            if v.run == run_id and v.source.endswith(f"/model/{checkpoint}")]


def reviews_of(run_ids: list[str], path: Path | None = None) -> list[dict[str, Any]]:
    """The summary of every review with a side from one of the runs (the report's "Human review" section); none,
    and no file made, when the workspace has no review database."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        return []
    store = ReviewStore(path)
    return [summarise(store, r) for r in store.list() if any(s.run in run_ids for s in r.sources)]
