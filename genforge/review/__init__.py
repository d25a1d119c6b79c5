"""Human review: people rate samples blind, beside the automatic metrics.

`build.py` prepares a review set from one run or two (`genforge review create`), `store.py` keeps sets, items and
ratings in `<workspace>/reviews/reviews.db`, `summary.py` turns ratings into figures with confidence intervals and
records them as `human.*` metrics; the service's routes are genforge/serve/reviews.py.
"""
