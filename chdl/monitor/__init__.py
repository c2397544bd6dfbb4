"""Live monitoring of a running capture: next-frame prediction, process-anomaly scores and alerts.

``anomaly_score`` (predictors, the frame scorer, alerts with hysteresis), ``runtime`` (``chdl monitor``: the
capture plus a scoring process and its output folder), ``evaluate`` (``chdl monitor-eval``), ``dashboard`` (the live web page, ``chdl dashboard`` and ``--serve``). The output
layout is documented in docs/monitor.md. Nothing in acquisition/curation/diffuma imports this package.
"""

# The default alert levels (ScorerConfig, chdl monitor, chdl monitor-eval), in robust sigmas of the frame-score
# baseline: the lowest z_on with no false alarm on 0.45 h of clean simulated 5 fps capture (constant motion,
# tools/monitor_operating_point.py, docs/monitor.md "Measured"); z_off = z_on / 2. Kept here, free of numpy
# and OpenCV, so the CLI can show them without importing the scorer.
Z_ON = 7.5
Z_OFF = 3.75
# The learned scorer's file format (chdl.monitor.learned_score; here so that --help can name it without numpy)
SCORER_FORMAT = "chdl.monitor-scorer/4"
# A monitor folder's status.json format: written by chdl.monitor.runtime, checked by chdl.monitor.dashboard
STATUS_FORMAT = "chdl.monitor/1"
