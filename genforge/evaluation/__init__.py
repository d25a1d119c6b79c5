"""Evaluation: metrics on arrays and frames (image.py, text.py, tabular.py), genforge's evaluator
network (evaluator.py), standard FID (fid.py, optional), the evaluate stage (pipeline.py) and the
HTML report (report.py)."""
