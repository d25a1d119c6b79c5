"""The ingest config: every cleaning threshold and gate rule is a field a user can set in YAML
or with `--set`, so no decision about their data is hidden in code."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genforge.config import StrictModel

ColumnType = Literal["numeric", "categorical", "boolean", "datetime", "id", "text"]


class ImageOptions(StrictModel):
    size: int = Field(32, ge=8, le=1024, description="output side in pixels: resize short side, centre-crop square")
    channels: Literal["auto", 1, 3] = Field("auto", description="auto: 1 when every image is grayscale, else 3")
    labels: Literal["auto", "folders", "none"] = Field("auto", description="folders: class = first sub-folder name; none: unlabeled; auto: folders when images sit in sub-folders")
    near_duplicate_hamming: int = Field(6, ge=0, le=64, description="max pHash (64-bit) distance of near-duplicate candidates (0: near-duplicate removal off)")
    near_duplicate_max_rmse: float = Field(5.0, ge=0, le=255, description="a candidate is a near-duplicate when its 16x16 grayscale thumbnail is within this RMSE (0-255 scale)")
    chunk_size: int = Field(1024, ge=16, le=65536, description="images held in memory at once")
    workers: int = Field(0, ge=0, le=64, description="decoding processes (0: one per CPU core)")


class TextOptions(StrictModel):
    format: Literal["auto", "lines", "paragraphs", "jsonl", "csv"] = "auto"
    field: str = Field("text", description="text column/key for jsonl and csv")
    prompt_field: str | None = Field(None, description="with completion_field: prompt/completion pairs for fine-tuning")
    completion_field: str | None = None
    label_field: str | None = Field(None, description="optional class column (used to stratify the split)")
    encoding: str = Field("auto", description="'auto' detects; anything else is used as given")
    min_chars: int = Field(1, ge=0, description="shorter texts are dropped (and counted by the gate)")
    max_chars: int = Field(20000, ge=1, description="longer texts are dropped (and counted by the gate)")
    near_duplicate_jaccard: float = Field(0.8, ge=0.0, le=1.0, description="MinHash Jaccard at or above which texts are near-duplicates (1.0: off)")
    shingle_chars: int = Field(5, ge=1, le=32, description="character n-gram size for MinHash (characters work for Chinese too)")
    num_perm: int = Field(128, ge=16, le=1024)


class TableOptions(StrictModel):
    types: dict[str, ColumnType] = Field(default_factory=dict, description="override inferred column types")
    label_column: str | None = Field(None, description="optional class column (used to stratify the split)")
    drop_duplicate_rows: bool = True
    encoding: str = Field("auto", description="csv encoding: 'auto' detects (see text.encoding); anything else is used as given")
    max_categories: int = Field(50, ge=1, description="a string column with at most this many distinct, repeating values is categorical")
    max_columns: int = Field(2000, ge=1, description="a table with more columns is refused before any per-column work (wide files cost time and memory per column); raise it for wider tables")
    pii_columns: Literal["exclude", "fake"] = Field("exclude", description="a PII column (see pii_column_share) is never learned from: exclude drops it from the dataset; fake replaces each PII value by a random one of the same format (seeded by split.seed and the column name), never a real one")
    pii_column_share: float = Field(0.5, gt=0.0, le=1.0, description="a column is a PII column when at least this share of its non-missing values are each one whole PII value (phone, e-mail, ID or card number)")
    keep_pii_columns: list[str] = Field(default_factory=list, description="PII columns treated like any other column, neither excluded nor faked (for false positives); recorded in the manifest")


class PiiOptions(StrictModel):
    detect: bool = True
    redact: bool = Field(False, description="replace found PII with [EMAIL], [PHONE], [ID_CARD], [CARD]")


class SplitOptions(StrictModel):
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = True

    @model_validator(mode="after")
    def _leaves_train(self) -> "SplitOptions":
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test must be below 1.0 so train is not empty, got {self.val + self.test}")
        return self


class GateOptions(StrictModel):
    """Rules of the quality gate; set a rule to null to switch it off."""

    min_examples: int | None = 100
    min_per_class: int | None = 10
    max_duplicate_share: float | None = Field(0.5, ge=0, le=1)
    max_unreadable_share: float | None = Field(0.1, ge=0, le=1)
    min_resolution: int | None = Field(16, ge=1, description="smallest source image side, in pixels")
    max_missing_share: float | None = Field(0.5, ge=0, le=1, description="per table column")
    max_length_violation_share: float | None = Field(0.1, ge=0, le=1, description="texts outside min_chars..max_chars")


class IngestConfig(StrictModel):
    kind: Literal["auto", "image", "text", "table"] = Field("auto", description="auto: folders are images, .txt/.jsonl text, .csv/.parquet tables")
    image: ImageOptions = ImageOptions()
    text: TextOptions = TextOptions()
    table: TableOptions = TableOptions()
    pii: PiiOptions = PiiOptions()
    split: SplitOptions = SplitOptions()
    gate: GateOptions = GateOptions()
