"""`genforge review create`: a blind review set from one run or two.

One run, rubric: its samples, one at a time. One run, pairs: each sample beside a real held-out example of its
dataset (the same class for images, the same held-out prompt for prompt/completion texts). Two runs, pairs: the
two runs' samples of the same condition (class or held-out prompt) and the same per-item seed side by side.
The items' order and which source is at a or b (exactly half the items each way) are drawn from the seed.

Both sides are made alike so that nothing but quality tells them apart: images are plain PNGs (no AI label, no
watermark: a reviewer must not be able to tell generated from real by its metadata), texts are cut to the same
token budget and moderated the same way (the real ones too), table rows are formatted by the report's own
`table_preview`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genforge.data.store import Dataset, open_dataset
from genforge.errors import ConfigError
from genforge.evaluation.pipeline import heldout, heldout_rows, heldout_texts
from genforge.evaluation.report import table_preview
from genforge.models import SampleRequest, TextSamples, gpt
from genforge.moderation import Moderator, moderate_samples
from genforge.outputs import to_pil
from genforge.review.store import Item, Mode, Review, ReviewStore, Source
from genforge.runs import Run, load_run
from genforge.tokenizer import TextTokenizer

MAX_ITEMS = 500  # a review set people can finish; a larger one is several reviews
MAX_TEXT_TOKENS = 160  # a text side at most: a few sentences a reviewer reads in seconds
TABLE_ROWS = 3  # rows per table side: one row alone is hard to judge
Contents = list[dict[str, Any]]  # one content per item, for one source


def create_review(refs: Sequence[str], n: int, mode: Mode | None = None, seed: int = 0, name: str | None = None,
                  store: ReviewStore | None = None) -> Review:
    """Sample the runs (and pick the real examples), shuffle, and store the review set; returns it."""
    if not 1 <= len(refs) <= 2:
        raise ConfigError(f"a review takes one run or two, got {len(refs)}")
    if not 1 <= n <= MAX_ITEMS:
        raise ConfigError(f"--n must be between 1 and {MAX_ITEMS} items, got {n}")
    if name is not None and (not 1 <= len(name) <= 200 or not name.isprintable()):
        raise ConfigError(f"--name must be 1-200 printable characters, got {name!r}")
    mode = mode or ("pairs" if len(refs) == 2 else "rubric")
    if mode == "rubric" and len(refs) == 2:
        raise ConfigError("a rubric review rates one run's samples one at a time; give one run, or --mode pairs")
    runs = [load_run(r) for r in refs]
    if len(runs) == 2 and runs[0].path == runs[1].path:
        raise ConfigError(f"both sides are run {runs[0].id}: compare two different runs, or one run against real "
                          "held-out examples (one run, --mode pairs)")
    datasets = [open_dataset(r.dataset_ref) for r in runs]
    dataset, kinds = datasets[0], {d.kind for d in datasets}
    if len(kinds) > 1:
        raise ConfigError(f"runs {runs[0].id} and {runs[1].id} make different kinds of data ({' and '.join(sorted(kinds))}); "
                          "a side-by-side review compares like with like")
    real = mode == "pairs" and len(runs) == 1
    make = {"image": _images, "text": _texts, "table": _tables}[dataset.kind]
    columns, real_source = make(runs, dataset, n, seed, real)
    sources = [Source(f"{r.id} @ {r.checkpoint().path.name}", r.dataset_ref, r.id, r.checkpoint().path.name)
               for r in runs] + ([real_source] if real_source else [])
    name = name or " vs ".join(s.label for s in sources)
    return (store or ReviewStore()).create(name, mode, dataset.kind, seed, sources, _shuffle(columns, n, seed))


def _shuffle(columns: list[Contents], n: int, seed: int) -> list[Item]:
    """Items in a seeded order; on pairs, source 0 at a on exactly half the items (which half: seeded)."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the picks of the contents use `seed`
    order, swapped = rng.permutation(n), rng.permutation(np.arange(n) % 2).astype(bool)
    items = []
    for position, k in enumerate(order):
        item_id = f"item-{position + 1:03d}"
        if len(columns) == 1:
            items.append(Item(item_id, columns[0][k], None, 0, None))
        else:
            a, b = (1, 0) if swapped[k] else (0, 1)
            items.append(Item(item_id, columns[a][k], columns[b][k], a, b))
    return items


def _no_heldout(run: Run, dataset: Dataset, what: str) -> ConfigError:
    return ConfigError(f"run {run.id}'s dataset {dataset.ref} has no held-out {what} (its val and test splits are "
                       "empty): there is nothing real to set beside the samples; review it as a rubric, or ingest "
                       "the data again with a val or test split")


def _cycled(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """n indices into `size` things in a seeded order, each used once before any is used again."""
    return rng.permutation(size)[np.arange(n) % size]


# ----------------------------------------------------------------------------- images

def _png(image: np.ndarray) -> dict[str, Any]:
    """(C, H, W) uint8 -> image content: a plain PNG, made the same way for generated and real images."""
    buf = io.BytesIO()
    to_pil(image.transpose(1, 2, 0)).save(buf, format="PNG")
    return {"type": "image", "b64_png": base64.b64encode(buf.getvalue()).decode("ascii")}


def _images(runs: list[Run], dataset: Dataset, n: int, seed: int, real: bool) -> tuple[list[Contents], Source | None]:
    """Class-conditional runs: item i asks for class i mod K on both sides (real: a held-out image of that class,
    K the classes the held-out split has)."""
    classes = runs[0].data_spec.classes
    if any(r.data_spec.classes != classes for r in runs):
        raise ConfigError(f"runs {runs[0].id} and {runs[1].id} have different classes "
                          f"({list(classes)} and {list(runs[1].data_spec.classes)}): a side-by-side image asks both "
                          "for the same class")
    rng = np.random.default_rng(seed)
    labels, columns, source = None, [], None
    if real:
        split, images, ys = heldout(dataset, runs[0].config.data.val_split)
        if not split:
            raise _no_heldout(runs[0], dataset, "images")
        ys = ys if classes else np.zeros(len(images), dtype=np.int64)
        present = np.unique(ys)
        wanted = present[np.arange(n) % len(present)]
        by_class = {c: np.flatnonzero(ys == c)[rng.permutation(int((ys == c).sum()))] for c in present}
        picks = [by_class[c][(k // len(present)) % len(by_class[c])] for k, c in enumerate(wanted)]
        labels = tuple(int(c) for c in wanted) if classes else None
        source = Source(f"real held-out ({split})", dataset.ref)
    elif classes:
        labels = tuple(i % len(classes) for i in range(n))
    for run in runs:
        columns.append([_png(x) for x in run.sample(SampleRequest.make(n, seed, labels=labels)).images])
    if real:
        columns.append([_png(images[i]) for i in picks])
    return columns, source


# ----------------------------------------------------------------------------- texts

def _texts(runs: list[Run], dataset: Dataset, n: int, seed: int, real: bool) -> tuple[list[Contents], Source | None]:
    """Prompt/completion runs complete held-out prompts (real: beside the held-out completion); other runs write
    new documents (real: beside held-out texts). Every text is cut to one token budget and moderated alike."""
    prompted = all(r.config.model.format == "prompt_completion" for r in runs)
    split, prompts, texts = heldout_texts(runs[0], dataset)
    if (real or prompted) and not texts:
        raise _no_heldout(runs[0], dataset, "prompts" if prompted else "texts")
    models = [r.model() for r in runs]
    toks = [TextTokenizer.from_fitted(m.fitted) for m in models]
    budgets = [min(m.options({}).max_tokens, MAX_TEXT_TOKENS) for m in models]
    pool = np.arange(len(texts))
    if prompted:  # the prompts every model can complete within its context
        fits = [all(len(gpt.prompt_ids(tok, prompts[i], r.config.model.format)) + budget <= m.spec.block_size
                    for r, m, tok, budget in zip(runs, models, toks, budgets)) for i in pool]
        pool = pool[np.asarray(fits, dtype=bool)]
        if not len(pool):
            raise ConfigError(f"none of the held-out prompts of {dataset.ref} fits the context of "
                              f"{' and '.join(r.id for r in runs)} with max_tokens {max(budgets)}")
    picks = pool[_cycled(np.random.default_rng(seed), len(pool), n)] if real or prompted else None
    asked = tuple(prompts[i] for i in picks) if prompted else None
    moderator, columns = Moderator(), []
    for run, budget in zip(runs, budgets):
        samples = run.sample(SampleRequest.make(n, seed, prompts=asked, options={"max_tokens": budget}))
        columns.append(_text_contents(moderate_samples(moderator, samples), asked))
    if not real:
        return columns, None
    cut = [toks[0].decode(toks[0].encode(texts[i])[:budgets[0]]) for i in picks]
    columns.append(_text_contents(moderate_samples(moderator, TextSamples(cut)), asked))
    return columns, Source(f"real held-out ({split})", dataset.ref)


def _text_contents(samples: TextSamples, prompts: Sequence[str] | None) -> Contents:
    return [{"type": "text", "prompt": None if prompts is None else prompts[i], "text": t}
            for i, t in enumerate(samples.texts)]


# ----------------------------------------------------------------------------- tables

def _tables(runs: list[Run], dataset: Dataset, n: int, seed: int, real: bool) -> tuple[list[Contents], Source | None]:
    """TABLE_ROWS generated rows per side (real: as many held-out rows, of the generated columns)."""
    frames = [r.sample(SampleRequest.make(n * TABLE_ROWS, seed)).frame for r in runs]
    columns = list(frames[0].columns)
    if any(list(f.columns) != columns for f in frames):
        raise ConfigError(f"runs {runs[0].id} and {runs[1].id} make rows of different columns: the columns alone "
                          "would tell a reviewer which side is which")
    source = None
    if real:
        split, rows = heldout_rows(runs[0], dataset)
        if not split:
            raise _no_heldout(runs[0], dataset, "rows")
        frames.append(rows[columns].iloc[_cycled(np.random.default_rng(seed), len(rows), n * TABLE_ROWS)])
        source = Source(f"real held-out ({split})", dataset.ref)
    return [_row_contents(f, n) for f in frames], source


def _row_contents(frame: pd.DataFrame, n: int) -> Contents:
    return [{"type": "table", **table_preview(frame.iloc[k * TABLE_ROWS:(k + 1) * TABLE_ROWS], TABLE_ROWS)}
            for k in range(n)]
