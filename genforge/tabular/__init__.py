"""The reversible per-column transformer the table families (CTGAN, TVAE, Gaussian copula) learn on.

Two layers: `columns.Codec` turns a typed frame into one array of model values per learned column
and back (types, missing values, ranges, rounding, fixed combinations, synthetic ids);
`vgm.TableTransformer` adds CTGAN's mode-specific normalisation and lays every column out in one
float matrix of spans. Both save as plain json, never pickle.
"""

from genforge.tabular.columns import Codec, Learned
from genforge.tabular.vgm import Span, TableTransformer, TransformConfig

__all__ = ["Codec", "Learned", "Span", "TableTransformer", "TransformConfig"]
