"""The model registry: MLflow's, with what its users have long asked for added on top.

MLflow keeps the registered models, their versions and the `champion` alias. genforge adds
(mlflow/mlflow issues 2169 and 6180):
- a promotion gate: the model's policy (`registry.policy` in the run config, stored on the registered
  model) must pass before the alias moves; `--force` needs a reason, and both are recorded;
- an append-only history of promotions, refusals and rollbacks in the registry's own store (one registered-model tag per event,
  `genforge.history.NNNNNN`), so everyone who uses that registry sees the same history;
- `rollback`: back to the champion before the current one, recorded like any promotion.

Writes that must not interleave (a new version, the alias and its history entry) run under a lock
made of MLflow itself: creating a registered model is atomic and fails if the name exists, so the
hidden model `_genforge_lock.<name>` is a mutex that works on the sqlite default and on a team's
server alike. A lock older than LOCK_TTL_S (its holder died) is broken, by one waiter at a time.

A version's figures are model-version tags `metric.<key>` (its evaluation's samples row) and
`reference.<key>` (the real reference row); `record_metrics` adds more later (a human-review score),
and a policy may name any of them. `genforge.eval` holds the evaluation's options: two versions are
compared only when theirs are equal.
"""

from __future__ import annotations

import getpass
import json
import random
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from genforge.errors import ConfigError, PromotionRefused, RegistryError
from genforge.runconfig import PromotionPolicy, Rule
from genforge.tracking import client, is_figure, sync, tracking_uri

CHAMPION = "champion"
LOCK_PREFIX = "_genforge_lock."
LOCK_TTL_S = 120.0
LOCK_WAIT_S = 120.0
BREAK_SUFFIX = "#break"  # "#" is in no registered model's name (_check_name), so no lock is named so
POLICY_TAG = "genforge.policy"
HISTORY_TAG = "genforge.history."
EVAL_TAG = "genforge.eval"
# Metric names whose smaller values are better; anything else a policy compares must say its direction.
LOWER_IS_BETTER = ("fd", "fid", "kid", "perplexity", "memorisation", "repetition", "self_bleu", "loss", "nelbo")
HIGHER_IS_BETTER = ("precision", "recall", "accuracy", "agreement", "coverage", "classifier_score", "distinct",
                    "review", "score", "human.")  # human.*: genforge/review/summary.py


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    run: str
    metrics: dict[str, float]
    reference: dict[str, float]
    evaluation: dict[str, Any]
    aliases: tuple[str, ...]
    source: str


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mlflow_error(e: Exception) -> str:
    return getattr(e, "error_code", "") or ""


# ----------------------------------------------------------------------------- the lock

@contextmanager
def _lock(c: Any, name: str) -> Iterator[None]:
    """Mutual exclusion per registered model, held in the registry's store (see the module's docstring)."""
    lock, deadline = LOCK_PREFIX + name, time.monotonic() + LOCK_WAIT_S
    while not _take(c, lock):
        _break_stale(c, lock)
        if time.monotonic() > deadline:
            raise RegistryError(f"the registry lock of {name!r} has been held for over {LOCK_WAIT_S:.0f} s; "
                                f"if no genforge command is running on it, delete the model {lock!r}")
        time.sleep(random.uniform(0.05, 0.3))
    try:
        yield
    finally:
        _release(c, lock)


def _take(c: Any, lock: str) -> bool:
    """Create the lock model: False when another process holds it."""
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(lock, tags={"owner": who(), "since": str(time.time())},
                                  description="genforge's registry lock; removed when the operation ends")
        return True
    except MlflowException as e:
        # MLflow's sqlite store answers a duplicate name by looking the model up, which says "not found"
        # when the holder released it in between: that is "try again" too, as is "database is locked".
        if _mlflow_error(e) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST") or "locked" in str(e):
            return False
        raise


def _release(c: Any, lock: str) -> None:
    """Delete the lock, retrying sqlite's "database is locked": a release lost to it left the lock to
    go stale, and every other process waited LOCK_TTL_S for it."""
    from mlflow.exceptions import MlflowException

    try:
        _retry(c.delete_registered_model, lock)
    except MlflowException as e:
        if _mlflow_error(e) != "RESOURCE_DOES_NOT_EXIST":
            raise


def _break_stale(c: Any, lock: str) -> None:
    """Delete a lock whose holder died (older than LOCK_TTL_S), under a second lock `<lock>#break`:
    two waiters that saw the same stale lock would otherwise both delete "it", the second deleting the
    lock the first had just taken, and both would hold it: two history entries with one number. A
    breaker that is itself stale died mid-break and is removed."""
    if not _stale(c, lock):
        return
    breaker = lock + BREAK_SUFFIX
    if not _take(c, breaker):
        if _stale(c, breaker):
            _release(c, breaker)
        return
    try:
        if _stale(c, lock):  # read again under the breaker: not a lock taken since
            _release(c, lock)
    finally:
        _release(c, breaker)


def _stale(c: Any, lock: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return time.time() - float(c.get_registered_model(lock).tags.get("since", "0")) > LOCK_TTL_S
    except (MlflowException, ValueError):
        return False  # released meanwhile


def _retry(fn, *args, **kwargs):
    """sqlite answers "database is locked" when several processes write at once: wait and try again."""
    from mlflow.exceptions import MlflowException

    for attempt in range(40):
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            if "locked" not in str(e) or attempt == 39:
                raise
            time.sleep(random.uniform(0.05, 0.3))


# ----------------------------------------------------------------------------- reading

def _version(mv: Any) -> Version:
    tags = mv.tags or {}

    def numbers(prefix: str) -> dict[str, float]:
        out = {}
        for k, v in tags.items():
            if k.startswith(prefix):
                try:
                    out[k[len(prefix):]] = float(v)
                except ValueError:
                    continue
        return out

    return Version(mv.name, str(mv.version), tags.get("genforge.run", ""), numbers("metric."), numbers("reference."),
                   json.loads(tags.get(EVAL_TAG, "{}")), tuple(getattr(mv, "aliases", ()) or ()), mv.source)


def get_version(name: str, version: str | int, c: Any = None) -> Version:
    from mlflow.exceptions import MlflowException

    c = c or client()
    try:
        return _version(c.get_model_version(name, str(version)))
    except MlflowException as e:
        raise RegistryError(f"no version {version} of model {name!r} in {tracking_uri()}: {_mlflow_error(e) or e}") from None


def champion(name: str, c: Any = None) -> Version | None:
    from mlflow.exceptions import MlflowException

    c = c or client()
    try:
        return _version(c.get_model_version_by_alias(name, CHAMPION))
    except MlflowException:
        return None


def policy(name: str, c: Any = None) -> PromotionPolicy:
    c = c or client()
    return PromotionPolicy.model_validate(json.loads(_registered(c, name).tags.get(POLICY_TAG, "{}")))


def _registered(c: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {tracking_uri()}; register one with "
                            f"`genforge register RUN --name {name}`") from None


def history(name: str, c: Any = None) -> list[dict[str, Any]]:
    """Every promotion, forced promotion, rollback and policy change, oldest first."""
    c = c or client()
    tags = _registered(c, name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_TAG))]


def _append_history(c: Any, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Under the lock: the next number is one past the highest, so no entry is lost or overwritten."""
    tags = _registered(c, name).tags
    seq = 1 + max((int(k[len(HISTORY_TAG):]) for k in tags if k.startswith(HISTORY_TAG)), default=0)
    entry = {"seq": seq, "at": _now(), "by": who(), **entry}
    _retry(c.set_registered_model_tag, name, f"{HISTORY_TAG}{seq:06d}", json.dumps(entry, sort_keys=True))
    return entry


def model_versions(name: str, c: Any = None) -> list[Version]:
    """Every version of one registered model, oldest first, with its aliases (RegistryError: no such model)."""
    c = c or client()
    aliases = {a: str(v) for a, v in (_registered(c, name).aliases or {}).items()}
    versions = [replace(v, aliases=tuple(a for a, n in aliases.items() if n == v.version))  # search omits them
                for v in map(_version, c.search_model_versions(f"name = '{name}'", max_results=10000))]
    return sorted(versions, key=lambda v: int(v.version))


def models(c: Any = None) -> list[dict[str, Any]]:
    """Every registered model (not the locks): versions, aliases, and each version's headline figures."""
    c = c or client()
    out = []
    for rm in c.search_registered_models(max_results=1000):
        if rm.name.startswith(LOCK_PREFIX):
            continue
        versions = model_versions(rm.name, c)
        aliases = {a: v.version for v in versions for a in v.aliases}
        out.append({"name": rm.name, "versions": versions, "aliases": aliases})
    return out


# ----------------------------------------------------------------------------- register

def register(run_ref: str, name: str | None = None, *, update_policy: bool = False) -> Version:
    """A new version of `name` (default: the run config's `registry.name`, else its name) carrying the
    run's evaluated checkpoint as a self-describing folder (model.json, safetensors, fitted state, the
    model card), the dataset version, the evaluation's figures and options. The run must have been
    evaluated on its newest checkpoint. The model's policy is set from the first registration's config;
    a later config's different policy replaces it only with `update_policy` (recorded in the history)."""
    from mlflow.exceptions import MlflowException

    from genforge.data.store import open_dataset
    from genforge.modelcard import model_card
    from genforge.runs import load_run

    run = load_run(run_ref)
    name = name or run.config.registry.name or run.config.name
    _check_name(name)
    metrics_path = run.path / "eval" / "metrics.json"
    if not metrics_path.is_file():
        raise RegistryError(f"run {run.id} has no evaluation; evaluate it first: genforge evaluate {run.id}")
    evaluation = json.loads(metrics_path.read_text(encoding="utf-8"))
    ckpt = run.checkpoint()
    if evaluation.get("checkpoint") != ckpt.path.name:
        raise RegistryError(f"run {run.id} was evaluated at {evaluation.get('checkpoint')}, but its newest checkpoint "
                            f"is {ckpt.path.name}: evaluate it again (genforge evaluate {run.id})")
    samples = next((r for r in evaluation["rows"] if r.get("kind") == "samples"), {})
    reference = next((r for r in evaluation["rows"] if r.get("kind") == "reference"), {})
    manifest = open_dataset(run.dataset_ref).manifest.model_dump(mode="json")
    card = model_card(run, evaluation, manifest, name)

    c = client()
    mlflow_run = sync(run.path)  # the training run in MLflow, made now if tracking was off or failed
    artifact_path = f"model/{ckpt.path.name}"
    source = f"{c.get_run(mlflow_run).info.artifact_uri}/{artifact_path}"
    tags = {"genforge.run": run.id, "genforge.family": run.family, "genforge.dataset": run.dataset_ref,
            "genforge.checkpoint": ckpt.path.name,
            EVAL_TAG: json.dumps(eval_key(evaluation), sort_keys=True),
            **{f"metric.{k}": repr(float(v)) for k, v in _numbers(samples).items()},
            **{f"reference.{k}": repr(float(v)) for k, v in _numbers(reference).items()}}
    new_policy = run.config.registry.policy
    with _lock(c, name):
        if not any(f.path.endswith("/model.json") for f in c.list_artifacts(mlflow_run, artifact_path)):
            with tempfile.TemporaryDirectory(prefix="genforge-register-") as tmp:  # once per checkpoint
                folder = _model_folder(run, Path(tmp) / "model")
                (folder / "MODEL_CARD.md").write_text(card, encoding="utf-8")
                c.log_artifacts(mlflow_run, str(folder), artifact_path)
        try:
            _retry(c.create_registered_model, name, tags={POLICY_TAG: new_policy.model_dump_json()},
                   description=f"genforge {run.family} model; its promotion policy is the tag {POLICY_TAG}")
        except MlflowException as e:
            if _mlflow_error(e) != "RESOURCE_ALREADY_EXISTS":
                raise
            old = policy(name, c)
            if old != new_policy and update_policy:
                _retry(c.set_registered_model_tag, name, POLICY_TAG, new_policy.model_dump_json())
                _append_history(c, name, {"action": "policy", "from": None, "to": None, "run": run.id,
                                          "policy": new_policy.model_dump(), "previous_policy": old.model_dump()})
            elif old != new_policy:
                print(f"note: {name!r} keeps its promotion policy; run {run.id}'s config has another "
                      "(register with --update-policy to replace it)", file=sys.stderr)
        mv = _retry(c.create_model_version, name, source, run_id=mlflow_run, tags=tags, description=card)
    return get_version(name, mv.version, c)


def _check_name(name: str) -> None:
    if not name or len(name) > 100 or name.startswith(LOCK_PREFIX) or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"a registered model's name is 1-100 letters, digits, '-', '_', '.', and does not start "
                          f"with {LOCK_PREFIX!r}; got {name!r}")


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if is_figure(v) and k != "n"}


def eval_key(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for two evaluations to be compared: dataset version and the options (n, seed,
    sampler settings, FID), not the checkpoint or the time."""
    return {"dataset": evaluation.get("dataset"), "options": evaluation.get("options", {})}


def _model_folder(run: Any, out: Path) -> Path:
    """The weights a sampler uses (EMA where kept) as a checkpoint folder of their own: model.json says
    what they are, so a server loads them from the folder alone, without the run or its optimizer state."""
    from genforge.checkpoint import save_model_folder

    model = run.model("cpu")
    info = {k: v for k, v in model.checkpoint.model_info().items() if k not in ("format", "fitted")}
    info["registered_from"] = {"run": run.id, "checkpoint": model.checkpoint.path.name}
    return save_model_folder(out, modules=model.modules, model_info=info, fitted=model.fitted)


def download(name: str, ref: str = CHAMPION, dst: Path | None = None) -> Path:
    """A version's model folder on local disk (`ref`: a version number or an alias), ready for `load_model`."""
    import mlflow.artifacts

    v = resolve(name, ref)
    dst = Path(dst or tempfile.mkdtemp(prefix=f"genforge-{name}-v{v.version}-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(dst),
                                                    tracking_uri=tracking_uri()))


def resolve(name: str, ref: str | int, c: Any = None) -> Version:
    """The version `ref` names: a version number or an alias (what the service follows)."""
    c = c or client()
    return get_version(name, ref, c) if str(ref).isdigit() else _alias(c, name, str(ref))


def _alias(c: Any, name: str, alias: str) -> Version:
    from mlflow.exceptions import MlflowException

    _registered(c, name)
    try:
        return _version(c.get_model_version_by_alias(name, alias))
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version with the alias {alias!r}") from None


def record_metrics(name: str, version: str | int, figures: dict[str, float]) -> Version:
    """Figures measured after registration (a human-review score): policies may name them like any other."""
    c = client()
    get_version(name, version, c)
    for k, v in figures.items():
        _retry(c.set_model_version_tag, name, str(version), f"metric.{k}", repr(float(v)))
    return get_version(name, version, c)


# ----------------------------------------------------------------------------- promote, rollback

def direction(rule: Rule) -> bool:
    """True when a larger value of the rule's metric is better."""
    if rule.higher_is_better is not None:
        return rule.higher_is_better
    m = rule.metric.lower()
    if any(t in m for t in LOWER_IS_BETTER):
        return False
    if any(t in m for t in HIGHER_IS_BETTER):
        return True
    raise ConfigError(f"promotion rule on {rule.metric!r}: set higher_is_better (true or false); genforge does not "
                      "know which way this metric improves")


def check(pol: PromotionPolicy, cand: Version, champ: Version | None) -> tuple[list[str], dict[str, Any]]:
    """Each failed rule as a sentence with its figures, and the figures themselves (for the history)."""
    failures, figures = [], {}
    if not cand.evaluation:
        failures.append(f"version {cand.version} has no evaluation")
    comparable = champ is None or champ.evaluation == cand.evaluation
    for rule in pol.rules:
        value = cand.metrics.get(rule.metric)
        base = champ.metrics.get(rule.metric) if champ else None
        figures[rule.metric] = {"value": value, "champion": base}
        if value is None:
            failures.append(f"{rule.metric} is not recorded for version {cand.version} "
                            f"(recorded: {', '.join(sorted(cand.metrics)) or 'none'})")
            continue
        if rule.min is not None and value < rule.min:
            failures.append(f"{rule.metric} {value:.4g} < min {rule.min:g}")
        if rule.max is not None and value > rule.max:
            failures.append(f"{rule.metric} {value:.4g} > max {rule.max:g}")
        if rule.max_regression is None or champ is None:
            continue
        if not comparable:
            failures.append(f"{rule.metric} cannot be compared with champion v{champ.version}: evaluated with "
                            f"{json.dumps(champ.evaluation, sort_keys=True)}, version {cand.version} with "
                            f"{json.dumps(cand.evaluation, sort_keys=True)}; evaluate both alike and register again")
        elif base is None:
            failures.append(f"{rule.metric} is not recorded for champion v{champ.version}")
        else:
            worse = (base - value if direction(rule) else value - base) / max(abs(base), 1e-12)
            if worse > rule.max_regression:
                failures.append(f"{rule.metric} {value:.4g} is {worse:.1%} worse than champion v{champ.version}'s "
                                f"{base:.4g} (tolerance {rule.max_regression:.1%})")
    return failures, figures


def promote(name: str, version: str | int, *, force: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Move `champion` to `version` if the model's policy passes (or `force`, with a reason); returns
    the history entry. A refusal is recorded too, then raised as PromotionRefused listing every failed rule."""
    if force and not (reason or "").strip():
        raise ConfigError("--force needs --reason \"...\": a forced promotion is recorded with its reason")
    c = client()
    with _lock(c, name):
        pol = policy(name, c)
        cand = get_version(name, version, c)
        champ = champion(name, c)
        if champ is not None and champ.version == cand.version:
            raise RegistryError(f"version {cand.version} is already the champion of {name!r}")
        failures, figures = check(pol, cand, champ)
        entry = {"from": champ.version if champ else None, "to": cand.version, "reason": reason, "figures": figures,
                 "failed": failures}  # (the policy itself: its own entries, when it changes)
        if failures and not force:
            _append_history(c, name, {**entry, "action": "refused"})
            raise PromotionRefused(name, cand.version, failures)
        _retry(c.set_registered_model_alias, name, CHAMPION, cand.version)
        return _append_history(c, name, {**entry, "action": "force" if force else "promote"})


def rollback(name: str, *, reason: str | None = None) -> dict[str, Any]:
    """Back to the champion before the current one: the `from` of the promotion that made the current
    champion (rollbacks are skipped, so rolling back twice goes back two steps). Recorded in the history."""
    c = client()
    with _lock(c, name):
        current = champion(name, c)
        if current is None:
            raise RegistryError(f"{name!r} has no champion to roll back from")
        made = [e for e in history(name, c) if e.get("to") == current.version and e.get("action") in ("promote", "force")]
        previous = made[-1].get("from") if made else None
        if previous is None:
            raise RegistryError(f"{name!r}: version {current.version} is the first champion in the history; "
                                "there is no earlier one to go back to")
        get_version(name, previous, c)  # still there (not deleted)
        _retry(c.set_registered_model_alias, name, CHAMPION, str(previous))
        return _append_history(c, name, {"action": "rollback", "from": current.version, "to": str(previous),
                                         "reason": reason, "figures": {}, "failed": []})
