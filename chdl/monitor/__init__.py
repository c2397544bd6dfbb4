"""Live monitoring of a running capture: next-frame prediction, process-anomaly scores and alerts.

``anomaly_score`` (predictors, the frame scorer, alerts with hysteresis), ``runtime`` (``chdl monitor``: the
capture plus a scoring process and its output folder), ``evaluate`` (``chdl monitor-eval``), ``dashboard`` (the live web page, ``chdl dashboard`` and ``--serve``). The output
layout is documented in docs/monitor.md. Nothing in acquisition/curation/diffuma imports this package.
"""
