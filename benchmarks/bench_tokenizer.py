"""The BPE trainer's peak memory and time on the built-in corpora, genforge's pre-tokenizer against
GPT-2's plain byte-level one (which sees an unspaced Chinese sentence as one word).

    .venv/bin/python benchmarks/bench_tokenizer.py --write     # -> results/tokenizer.md

Each variant trains in its own process (peak RSS is per process); the figure is the peak minus the
RSS after the texts are loaded, i.e. what training the tokenizer costs. Compression is characters
per token on the first 2,000 texts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "tokenizer.md"
VARIANTS = ("genforge", "plain-bytelevel", "han-single")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(corpus: str, variant: str, vocab: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex

    from genforge.data.sources import _news, _reviews
    from genforge.tokenizer import SPECIALS, TextTokenizer

    texts = list((_reviews() if corpus == "reviews" else _news())["text"].astype(str))
    base = rss_mb()
    t = time.perf_counter()
    if variant == "genforge":
        tok = TextTokenizer.train(texts, vocab).tokenizer
    else:
        tok = Tokenizer(models.BPE())
        bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = bl if variant == "plain-bytelevel" else pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"), bl])
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIALS), show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    seconds = time.perf_counter() - t
    sample = texts[:2000]
    tokens = sum(len(e.ids) for e in tok.encode_batch(sample, add_special_tokens=False))
    return {"corpus": corpus, "variant": variant, "texts": len(texts), "chars": sum(map(len, texts)),
            "train_s": seconds, "peak_mb": rss_mb() - base, "chars_per_token": sum(map(len, sample)) / tokens}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--corpora", default="reviews,news")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.vocab)))
        return
    rows = []
    for corpus in args.corpora.split(","):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--vocab", str(args.vocab), "--child", corpus, variant],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = [f"## BPE training, vocabulary {args.vocab}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}, load before {os.getloadavg()}", "",
             "| corpus | pre-tokenizer | texts | characters | train s | peak MB over the loaded texts | chars/token |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['corpus']} | {r['variant']} | {r['texts']:,} | {r['chars']:,} | {r['train_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['chars_per_token']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Tokenizer benchmarks\n\n"
        RESULTS.write_text(old + text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
