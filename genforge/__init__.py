"""genforge: from raw business data to a served, monitored generator.

The Python API (the CLI calls exactly these):

    import genforge
    genforge.ingest("builtin:digits", "digits")
    run = genforge.train("configs/quickstart.yaml")
    out = genforge.generate(run.id, n=16, seed=0, options={"temperature": 0.8})
    metrics = genforge.evaluate(run.id, n=500)
"""

__version__ = "0.1.0"

from genforge.api import Generated, compare, evaluate, generate, ingest, train  # noqa: E402

__all__ = ["Generated", "compare", "evaluate", "generate", "ingest", "train"]
