"""Load test of `genforge serve`: 32 concurrent clients for 60 s against a language model and an
image model, with batching and at batch size 1, and the same text load against `transformers serve
--continuous-batching` serving the same weights (exported with `genforge export --format hf`).

    .venv/bin/python benchmarks/bench_serve.py --write      # -> results/serve.md (about 10 minutes)
    .venv/bin/python benchmarks/bench_serve.py --quick      # every path in a minute or two

Bounded and local: clients and servers on 127.0.0.1, `--seconds` per contender, `--clients`
threads each sending one request at a time (a closed loop). Models (random weights: throughput does
not depend on training; a 1-step run gives a real run folder with a tokenizer):
- text: GPT-2 layout, 8 layers, width 512, 8 heads, 512 positions, an 8,000-token BPE vocabulary
  trained on the built-in reviews (about 30M parameters); requests `/v1/completions` with a review's
  first characters as the prompt, `max_tokens` 64, plain sampling on both servers (temperature 1,
  top_p 1, no repetition penalty);
- images: the quickstart-sized diffusion UNet (configs/diffusion-digits.yaml), one image per request,
  DPM-Solver++(2M) at 10 steps with guidance (the defaults); and the class-conditional GAN
  (configs/gan-digits.yaml, 0.8M parameters, one forward pass per image). Batching gains what the
  model itself gains from a larger batch on these cores, so each is also timed alone (no server),
  one image per call against 32: the UNet is compute-bound (little to gain), the GAN's single image
  is mostly per-call overhead (much to gain).
Figures: completed requests and tokens (or images) per second, latency p50/p99, status counts (zero
5xx expected), and the servers' peak memory (RSS of the server process and its children).
During the image run with batching, the model is served from the registry and promoted to version 2
at a third of the run and rolled back at two thirds: every response names its version, and the
run counts failures and the responses each version gave.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results" / "serve.md"
FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
GPT30M = ["model.vocab_size=8000", "model.block_size=512", "model.n_layer=8", "model.n_head=8", "model.n_embd=512",
          "model.dropout=0.0"]


def sh(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "genforge", *args], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: dict, key: str | None, timeout: float = 300) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError as e:
        return 599, {"error": repr(e)}


# ----------------------------------------------------------------------------- setup

def prepare(home: Path, quick: bool) -> dict[str, Any]:
    """Datasets, the two runs (and two registered image versions), the HF export, a key."""
    env = {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": "off"}
    os.environ.update(GENFORGE_HOME=str(home), GENFORGE_TRACKING="off")
    marker = home / ("prepared-quick.json" if quick else "prepared.json")
    if marker.is_file():
        return gan_run(json.loads(marker.read_text()), marker, env)
    from genforge import registry
    from genforge.evaluation.pipeline import EvalOptions, evaluate_run
    from genforge.interop import export_hf
    from genforge.runs import load_run
    from genforge.serve.keys import KeyStore
    sh("data", "ingest", "builtin:reviews", "--name", "reviews", env=env)
    sh("data", "ingest", "builtin:digits", "--name", "digits", env=env)
    gpt = GPT30M if not quick else ["model.vocab_size=1000", "model.block_size=128", "model.n_layer=2",
                                    "model.n_head=2", "model.n_embd=64", "model.dropout=0.0"]
    sh("train", "configs/gpt-reviews.yaml", "--set", "name=bench-writer", "--set", "train.steps=1",
       *[a for s in gpt for a in ("--set", s)], env=env)
    text_run = load_run("bench-writer").id
    export_hf(text_run, home / "hf-writer")
    image_runs = []
    for seed in (0, 1):
        sh("train", "configs/diffusion-digits.yaml", "--set", "name=bench-images", "--set", "train.steps=1",
           "--set", f"train.seed={seed}", "--set", "train.val_every=0", env=env)
        run = load_run("bench-images").id
        evaluate_run(run, EvalOptions(n=32, seed=0))
        registry.register(run, "bench-images")
        image_runs.append(run)
    registry.promote("bench-images", "1")
    secret, _ = KeyStore(home / "keys.db").create("bench")
    info = {"text_run": text_run, "image_runs": image_runs, "key": secret, "hf": str(home / "hf-writer")}
    return gan_run(info, marker, env)


def gan_run(info: dict[str, Any], marker: Path, env: dict) -> dict[str, Any]:
    """The GAN image run (a 1-step run of configs/gan-digits.yaml), added to the prepared workspace."""
    if "gan_run" not in info:
        from genforge.runs import load_run
        sh("train", "configs/gan-digits.yaml", "--set", "name=bench-gan", "--set", "train.steps=1",
           "--set", "train.val_every=0", env=env)
        info["gan_run"] = load_run("bench-gan").id
        marker.write_text(json.dumps(info))
    return info


# ----------------------------------------------------------------------------- servers

class Proc:
    """A server process on `port`, ready when `ready(url)`; its peak memory (with children) sampled
    while it runs."""

    def __init__(self, cmd: list[str], port: int, env: dict, ready: Callable[[str], bool], log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}", open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.peak, self._stop = 0, threading.Event()
        deadline = time.monotonic() + 600
        while not ready(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        p = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def ok(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(url + path, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def genforge_server(home: Path, info: dict, kind: str, max_batch: int, extra_env: dict | None = None) -> Proc:
    model = {"text": {"name": "writer", "run": info["text_run"]}, "image": {"name": "images", "registry": "bench-images"},
             "gan": {"name": "gan", "run": info.get("gan_run")}}[kind]
    port = free_port()
    cfg = {"port": port, "models": [model], "keys_db": str(home / "keys.db"), "reload_interval_s": 0.5,
           "batching": {"max_batch": max_batch, "max_wait_ms": 10, "max_queue": 4096},
           "limits": {"max_images": 8, "max_tokens": 256, "request_timeout_s": 600, "max_streams": 256}}
    path = home / f"serve-{kind}-{max_batch}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Proc([sys.executable, "-m", "genforge", "serve", "--config", str(path)], port,
                {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": "off", **(extra_env or {})},
                lambda u: ok(u, "/readyz"),
                home / f"serve-{kind}-{max_batch}.log")


def transformers_server(home: Path, info: dict, extra_env: dict | None = None) -> Proc:
    port = free_port()
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    return Proc([exe, "serve", info["hf"], "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1",
                 "--port", str(port)], port, {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})},
                lambda u: ok(u, "/health"),
                home / "transformers-serve.log")


# ----------------------------------------------------------------------------- load

PROMPTS = ["这本书", "质量很好", "物流", "买了", "孩子很喜欢", "价格", "包装", "不推荐", "客服", "第二次购买"]


def load(url: str, body: Callable[[int], dict], key: str | None, clients: int, seconds: float,
         events: list[tuple[float, Callable[[], None]]] = ()) -> dict[str, Any]:
    """`clients` threads, each one request at a time, for `seconds`; `events` run at their offsets."""
    results: list[tuple[float, float, int, dict]] = []
    start = time.monotonic()
    stop = start + seconds

    def client(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            t = time.monotonic()
            status, payload = request(url, body(i * 100_000 + n), key)
            results.append((t - start, time.monotonic() - t, status, payload))
            n += 1
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for offset, fn in events:
        time.sleep(max(0.0, start + offset - time.monotonic()))
        fn()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    good = [r for r in results if r[2] == 200]
    lat = sorted(r[1] for r in good) or [float("nan")]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    tokens = sum(r[3].get("usage", {}).get("completion_tokens", 0) for r in good)
    images = sum(len(r[3].get("data", [])) for r in good)
    versions: dict[str, int] = {}
    for r in good:
        fp = r[3].get("system_fingerprint")
        if fp:
            versions[fp] = versions.get(fp, 0) + 1
    return {"requests": len(good), "wall_s": wall, "req_per_s": len(good) / wall, "tokens_per_s": tokens / wall,
            "images_per_s": images / wall, "p50_s": lat[len(lat) // 2], "p99_s": lat[min(len(lat) - 1,
                                                                                          int(len(lat) * 0.99))],
            "statuses": statuses, "versions": versions,
            "errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5"))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    info = prepare(home, args.quick)
    from genforge import registry
    key, out = info["key"], {}

    def text_body(i: int) -> dict:  # plain sampling on both servers: no nucleus cut, no penalty
        return {"model": "writer", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
                "temperature": 1.0, "top_p": 1.0, "seed": i}

    # OpenMP's wait policy: `genforge serve` sets PASSIVE unless told otherwise (server.passive_openmp);
    # each server is also run with the other policy, so the effect on both is measured in one run
    texts = [("genforge", args.clients, None), ("genforge, OMP_WAIT_POLICY=ACTIVE", args.clients, "ACTIVE"),
             ("genforge batch 1", 1, None)] if args.only in ("all", "text") else []
    for name, batch, policy in texts:
        server = genforge_server(home, info, "text", batch, {"OMP_WAIT_POLICY": policy} if policy else None)
        body = lambda i: {**text_body(i), "repetition_penalty": 1.0}  # noqa: E731 - the run's default is 1.1
        try:
            out[f"text: {name}"] = {**load(server.url + "/v1/completions", body, key, args.clients,
                                           args.seconds), "peak_mb": server.peak / 1e6}
        finally:
            server.stop()
        print(name, out[f"text: {name}"], flush=True)
    peers = [("", None), (", OMP_WAIT_POLICY=PASSIVE", "PASSIVE")] if args.only in ("all", "text") else []
    for suffix, policy in peers if not args.no_peer else []:
        server = transformers_server(home, info, {"OMP_WAIT_POLICY": policy} if policy else None)
        name = f"text: transformers serve --continuous-batching{suffix}"
        try:
            body = lambda i: {**text_body(i), "model": info["hf"]}  # noqa: E731
            out[name] = {**load(server.url + "/v1/completions", body, None, args.clients, args.seconds),
                         "peak_mb": server.peak / 1e6}
        finally:
            server.stop()
        print(out[name], flush=True)
    if args.only == "text":
        return out

    def image_body(model: str) -> Callable[[int], dict]:
        return lambda i: {"model": model, "prompt": str(i % 10), "n": 1, "seed": i}

    # the diffusion model (from the registry: promoted and rolled back during the batched run), then the GAN
    for label, kind, model in (("images", "image", "images"), ("images (GAN)", "gan", "gan")):
        for name, batch in (("genforge", args.clients), ("genforge batch 1", 1)):
            swaps = []
            if kind == "image":
                if registry.champion("bench-images").version != "1":
                    registry.promote("bench-images", "1", force=True, reason="benchmark start")
                swaps = [] if batch == 1 else [
                    (args.seconds / 3, lambda: registry.promote("bench-images", "2", force=True, reason="benchmark")),
                    (2 * args.seconds / 3, lambda: registry.rollback("bench-images", reason="benchmark"))]
            server = genforge_server(home, info, kind, batch)
            try:
                out[f"{label}: {name}"] = {**load(server.url + "/v1/images/generations", image_body(model), key,
                                                  args.clients, args.seconds, swaps), "peak_mb": server.peak / 1e6,
                                           "swaps": "promote v2 at 1/3, rollback at 2/3" if swaps else ""}
            finally:
                server.stop()
            print(name, out[f"{label}: {name}"], flush=True)
    from genforge.runs import load_run
    for name, checkpoint in (("image model alone", registry.download("bench-images", "1")),
                             ("GAN alone", load_run(info["gan_run"]).checkpoint().path)):
        out[name] = {policy: image_ceiling(home, checkpoint, args.clients, policy) for policy in ("default", "PASSIVE")}
    return out


CEILING = """
import json, sys, time
from genforge.models import SampleRequest
from genforge.sampling import load_model
model, clients, out = load_model(sys.argv[1], "cpu"), int(sys.argv[2]), {}
request = SampleRequest.make(clients, seed=0, labels=tuple(i % 10 for i in range(clients)))
for batch in (1, clients, 1, clients):
    t = time.perf_counter()
    model.sample(request, batch_size=batch)
    out[str(batch)] = max(out.get(str(batch), 0.0), clients / (time.perf_counter() - t))
print(json.dumps(out))
"""


def image_ceiling(home: Path, checkpoint: Any, clients: int, policy: str) -> dict[str, float]:
    """Images/s of an image model alone (a process of its own, OpenMP's wait policy `policy`: the
    server runs PASSIVE), one image per call against `clients` per call: what batching can gain on
    these cores (the server adds HTTP, the watermark, PNG encoding and scheduling)."""
    env = {**os.environ, "GENFORGE_HOME": str(home), "GENFORGE_TRACKING": "off"}
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    p = subprocess.run([sys.executable, "-c", CEILING, str(checkpoint), str(clients)], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def ceiling(what: str, alone: dict[str, dict[str, float]], clients: int) -> str:
    """The model-alone figures, per OpenMP wait policy, as a sentence."""
    parts = [f"{policy}: {r['1']:.1f} images/s one per call, {r[str(clients)]:.1f} at {clients} per call "
             f"({r[str(clients)] / r['1']:.1f}x)" for policy, r in alone.items()]
    return f"{what} alone (no server), by OpenMP wait policy (the server's is PASSIVE): " + "; ".join(parts) + "."


def report(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [f"## genforge serve under load, {info['date']}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; flags: {info['flags']}; load before "
             f"{info['load_before']}; torch {info['torch']}, transformers {info['transformers']}, git {info['git']}.",
             "", f"{args.clients} concurrent clients (closed loop), {args.seconds:.0f} s per contender, loopback. "
             f"Text: /v1/completions, max_tokens {args.max_tokens}; images: one per request.", "",
             "| contender | requests | req/s | tokens/s | images/s | p50 s | p99 s | 5xx | statuses | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name.endswith("alone"):
            continue
        lines.append(f"| {name} | {r['requests']} | {r['req_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['images_per_s']:.1f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['errors_5xx']} | "
                     f"{r['statuses']} | {r['peak_mb']:.0f} |")
    if "text: genforge" in results:
        t, t1 = results["text: genforge"], results["text: genforge batch 1"]
        lines += ["", f"Batching gain, text: {t['tokens_per_s'] / max(t1['tokens_per_s'], 1e-9):.1f}x tokens/s."]
        peers = {k: v for k, v in results.items() if k.startswith("text: transformers serve")}
        if peers:
            best, peer = max(peers.items(), key=lambda kv: kv[1]["tokens_per_s"])
            lines.append(f"Against the faster transformers serve ({best[6:]}): "
                         f"{t['tokens_per_s'] / max(peer['tokens_per_s'], 1e-9):.2f}x its tokens/s at "
                         f"{t['peak_mb'] / max(peer['peak_mb'], 1e-9):.2f}x its peak memory.")
    if "images: genforge" in results:
        i, i1 = results["images: genforge"], results["images: genforge batch 1"]
        lines += ["", f"Batching gain, images: {i['images_per_s'] / max(i1['images_per_s'], 1e-9):.1f}x images/s. "
                      + ceiling("The image model", results["image model alone"], args.clients),
                  f"Promotion and rollback during the batched image run: responses by version {i['versions']}, "
                  f"5xx {i['errors_5xx']}, statuses {i['statuses']}."]
    if "images (GAN): genforge" in results:
        g, g1 = results["images (GAN): genforge"], results["images (GAN): genforge batch 1"]
        lines += [f"Batching gain, GAN images: {g['images_per_s'] / max(g1['images_per_s'], 1e-9):.1f}x images/s. "
                  + ceiling("The GAN", results["GAN alone"], args.clients)]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--home", default=str(ROOT / "out" / "serve-ws"), help="the benchmark's own workspace")
    p.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    p.add_argument("--only", choices=["all", "text", "images"], default="all", help="which load tests to run")
    p.add_argument("--quick", action="store_true", help="tiny models, 4 clients, 8 s each")
    p.add_argument("--write", action="store_true", help=f"append to {RESULTS.relative_to(REPO)}")
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds, args.max_tokens = 4, 8.0, 16
        args.home = args.home + "-quick"
    from genforge.devices import cpu_flags
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": platform.processor() or "?",
            "cores": os.cpu_count(), "flags": ", ".join(sorted(cpu_flags() & FLAGS)), "load_before": os.getloadavg(),
            "torch": version("torch"), "transformers": version("transformers"),
            "git": os.popen(f"git -C {REPO} rev-parse --short HEAD").read().strip()}
    results = run(args)
    text = report(results, args, info)
    print(text)
    print(json.dumps(results, default=str))
    if args.write and not args.quick:
        from genforge.workspace import atomic_write_text
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Service load tests\n\n"
        atomic_write_text(RESULTS, old + text + "\n")


if __name__ == "__main__":
    main()
