"""API keys and rate limits: secrets never stored, bad input refused, buckets exact and shared across processes."""

import json
import multiprocessing
import stat

import pytest
from typer.testing import CliRunner

from genforge.errors import ConfigError
from genforge.serve.keys import Decision, KeyStore, RateLimiter
from genforge.serve.keys_cli import keys_app

T0 = 1_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def frozen_clock() -> float:
    """Module-level, so a spawned process can use it."""
    return T0


def acquire_many(path: str, key, n: int, barrier, results) -> None:
    """A worker process: `n` acquires against the shared file; puts how many were allowed."""
    limiter = RateLimiter(path, clock=frozen_clock)
    barrier.wait()
    results.put(sum(limiter.acquire(key).allowed for _ in range(n)))


@pytest.fixture
def db(tmp_path):
    return tmp_path / "serve" / "keys.db"


# ----------------------------------------------------------------------------- keys

def test_create_authenticate_list_revoke(db):
    store = KeyStore(db)
    secret, key = store.create("marketing-team", models=["gpt-small"], requests_per_minute=60)
    assert secret.startswith("gf-") and len(secret) > 40 and key.prefix == secret[:10]
    assert key.id.startswith("key_") and len(key.id) == 12
    assert key.models == ("gpt-small",) and key.requests_per_minute == 60 and key.units_per_minute is None
    assert key.created_at.endswith("+00:00") and key.revoked_at is None
    assert store.authenticate(secret) == key
    assert KeyStore(db).authenticate(secret) == key  # another store (another worker) on the same file sees it

    other_secret, other = store.create("ops")
    assert store.list() == [key, other]
    revoked = store.revoke(key.id)
    assert revoked.revoked_at is not None and revoked.id == key.id
    assert store.authenticate(secret) is None and store.authenticate(other_secret) == other
    assert store.list() == [revoked, other]  # revoked keys stay listed


def test_secret_not_stored_and_file_owner_only(db):
    store = KeyStore(db)
    secret, _ = store.create("a")
    store.authenticate(secret)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600 and stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    files = [p for p in db.parent.iterdir() if p.name.startswith("keys.db")]  # the -wal file holds recent writes
    assert db in files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert not any(secret.encode() in p.read_bytes() for p in files)


@pytest.mark.parametrize("bad", ["", "gf-", "gf-unknown", "gf-" + "a" * 250, "gf-ключ", "Bearer gf-x"])
def test_unknown_and_malformed_secrets(db, bad):
    store = KeyStore(db)
    store.create("a")
    assert store.authenticate(bad) is None


def test_changed_secret_does_not_authenticate(db):
    store = KeyStore(db)
    secret, _ = store.create("a")
    assert store.authenticate(secret[:-1]) is None and store.authenticate(secret + "x") is None


def test_allows_scopes_models(db):
    store = KeyStore(db)
    _, scoped = store.create("a", models=["gpt-small", "digits"])
    _, everything = store.create("b")
    assert scoped.allows("digits") and not scoped.allows("gpt-large") and not scoped.allows("")
    assert everything.allows("anything")


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "name must be 1-64 printable characters, got ''"),
    ({"name": "x" * 65}, "name must be 1-64"),
    ({"name": "tab\there"}, "name must be 1-64 printable"),
    ({"requests_per_minute": 0}, "requests_per_minute must be a positive integer or None (unlimited), got 0"),
    ({"units_per_minute": -5}, "units_per_minute must be a positive integer or None (unlimited), got -5"),
    ({"units_per_minute": 2.5}, "units_per_minute must be a positive integer"),
    ({"requests_per_minute": True}, "requests_per_minute must be a positive integer"),
    ({"models": []}, "models must be a non-empty list"),
    ({"models": "gpt-small"}, "models must be a non-empty list of model names or None (all models), got 'gpt-small'"),
    ({"models": ["a", ""]}, "models must hold non-empty model names, got ''"),
])
def test_validation_names_field_rule_and_value(db, kwargs, message):
    store = KeyStore(db)
    with pytest.raises(ConfigError) as e:
        store.create(**{"name": "ok", **kwargs})
    assert message in str(e.value)
    assert store.list() == []


def test_revoke_unknown_and_twice(db):
    store = KeyStore(db)
    _, key = store.create("a")
    with pytest.raises(ConfigError, match="no API key with id 'key_nothere'"):
        store.revoke("key_nothere")
    store.revoke(key.id)
    with pytest.raises(ConfigError, match=f"API key {key.id} was already revoked at"):
        store.revoke(key.id)


def test_newer_schema_is_refused(db):
    import sqlite3

    KeyStore(db)
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="schema version 99"):
        KeyStore(db)


# ----------------------------------------------------------------------------- rate limits

def test_requests_bucket_refuses_names_limit_and_refills(db):
    _, key = KeyStore(db).create("a", requests_per_minute=6)  # one request per 10 s
    clock = Clock()
    limiter = RateLimiter(db, clock=clock)
    assert all(limiter.acquire(key).allowed for _ in range(6))  # a full minute's burst
    assert limiter.acquire(key) == Decision(False, "requests_per_minute", 10.0)
    clock.now += 4
    assert limiter.acquire(key) == Decision(False, "requests_per_minute", pytest.approx(6.0))
    clock.now += 6
    assert limiter.acquire(key) == Decision(True, None, 0.0)
    assert not limiter.acquire(key).allowed
    clock.now += 3600  # refill stops at capacity
    assert sum(limiter.acquire(key).allowed for _ in range(10)) == 6


def test_units_and_requests_are_both_or_neither(db):
    _, key = KeyStore(db).create("a", requests_per_minute=3, units_per_minute=120)  # 2 units per second
    clock = Clock()
    limiter = RateLimiter(db, clock=clock)
    assert limiter.acquire(key, units=100).allowed
    refused = limiter.acquire(key, units=30)  # 20 units left: needs 10 more, 5 s
    assert refused == Decision(False, "units_per_minute", 5.0)
    # the refusal took no request either: two more requests fit, then the requests bucket refuses alone
    assert limiter.acquire(key, units=10).allowed and limiter.acquire(key, units=10).allowed
    assert limiter.acquire(key, units=0) == Decision(False, "requests_per_minute", 20.0)
    clock.now += 20  # 1 request back; units 0 + 40 = 40
    assert limiter.acquire(key, units=40).allowed


def test_refusal_waits_for_the_slower_bucket(db):
    _, key = KeyStore(db).create("a", requests_per_minute=1, units_per_minute=60)
    limiter = RateLimiter(db, clock=Clock())
    assert limiter.acquire(key, units=60).allowed
    assert limiter.acquire(key, units=30) == Decision(False, "requests_per_minute", 60.0)  # units would wait 30 s
    assert limiter.acquire(key, units=0) == Decision(False, "requests_per_minute", 60.0)


def test_more_units_than_capacity_is_refused_for_good(db):
    _, key = KeyStore(db).create("a", units_per_minute=100)
    limiter = RateLimiter(db, clock=Clock())
    assert limiter.acquire(key, units=101) == Decision(False, "units_per_minute", 60.0)
    assert limiter.acquire(key, units=100).allowed  # the refusal took nothing


def test_settle_gives_back_and_takes_extra(db):
    _, key = KeyStore(db).create("a", units_per_minute=100)
    clock = Clock()
    limiter = RateLimiter(db, clock=clock)
    assert limiter.acquire(key, units=80).allowed
    assert not limiter.acquire(key, units=50).allowed
    limiter.settle(key, reserved=80, used=30)  # 50 back: level 70
    assert limiter.acquire(key, units=70).allowed
    limiter.settle(key, reserved=70, used=0)
    limiter.settle(key, reserved=70, used=0)  # never above capacity
    assert limiter.acquire(key, units=100).allowed and not limiter.acquire(key, units=1).allowed
    limiter.settle(key, reserved=0, used=30)  # used more than reserved: a debt of 30, repaid at 100/60 per second
    assert limiter.acquire(key, units=1) == Decision(False, "units_per_minute", pytest.approx(18.6))
    with pytest.raises(ValueError, match="used must be a non-negative integer, got -1"):
        limiter.settle(key, reserved=1, used=-1)


def test_key_without_limits_is_always_allowed_and_writes_nothing(db):
    import sqlite3

    _, key = KeyStore(db).create("a")
    limiter = RateLimiter(db, clock=Clock())
    assert all(limiter.acquire(key, units=10**9).allowed for _ in range(100))
    limiter.settle(key, reserved=10, used=0)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM buckets").fetchone()[0] == 0


def test_two_processes_share_one_limit(db):
    _, key = KeyStore(db).create("shared", requests_per_minute=20)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=acquire_many, args=(str(db), key, 30, barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    counts = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sum(counts) == 20
    assert RateLimiter(db, clock=frozen_clock).acquire(key) == Decision(False, "requests_per_minute", 3.0)


# ----------------------------------------------------------------------------- CLI

def test_cli_create_list_revoke(tmp_path):
    env = {"GENFORGE_HOME": str(tmp_path / "ws")}
    runner = CliRunner()

    created = runner.invoke(keys_app, ["create", "marketing-team", "--models", "gpt-small, digits", "--rpm", "60",
                                       "--json"], env=env)
    assert created.exit_code == 0, created.output
    made = json.loads(created.stdout)
    secret, key = made["secret"], made["key"]
    assert key["models"] == ["gpt-small", "digits"] and key["requests_per_minute"] == 60
    assert KeyStore(tmp_path / "ws" / "serve" / "keys.db").authenticate(secret).id == key["id"]

    listed = runner.invoke(keys_app, ["list", "--json"], env=env)
    assert listed.exit_code == 0 and json.loads(listed.stdout) == [key]
    assert secret not in listed.output and secret[10:] not in runner.invoke(keys_app, ["list"], env=env).output

    plain = runner.invoke(keys_app, ["create", "ops", "--upm", "1000"], env=env)
    assert plain.exit_code == 0 and "cannot be shown again" in plain.stdout
    assert any(line.startswith("gf-") for line in plain.stdout.splitlines())

    revoked = runner.invoke(keys_app, ["revoke", key["id"]], env=env)
    assert revoked.exit_code == 0 and f"revoked {key['id']}" in revoked.stdout
    again = runner.invoke(keys_app, ["revoke", key["id"]], env=env)
    assert again.exit_code == 1 and f"error: API key {key['id']} was already revoked at" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    unknown = runner.invoke(keys_app, ["revoke", "key_nothere"], env=env)
    assert unknown.exit_code == 1 and "error: no API key with id 'key_nothere'" in unknown.stderr


def test_cli_rejects_bad_limit(tmp_path):
    result = CliRunner().invoke(keys_app, ["create", "a", "--rpm", "0"], env={"GENFORGE_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert "requests_per_minute must be a positive integer or None (unlimited), got 0" in result.stderr
