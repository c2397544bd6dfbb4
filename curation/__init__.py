"""Curation: raw recordings -> QC -> reconstruction -> the curated dataset (``chdl curate``).

Modules, in the order the data flows (docs/curation.md describes the whole):

* :mod:`curation.config`      settings and thresholds (defaults, YAML overrides)
* :mod:`curation.plan`        recordings -> lane sequences, missing frames, the train/val split
* :mod:`curation.qc`          per-frame scores and flags of one sequence
* :mod:`curation.reconstruct` motion-compensated bilinear reconstruction of bad frames
* :mod:`curation.sequence`    one sequence end to end (score, flag, reconstruct, exclude)
* :mod:`curation.pipeline`    the command: workers over whole shards, resume, overwrite rules
* :mod:`curation.report`      the HTML + JSON QC report
* :mod:`curation.synthetic`   small synthetic faulty sequences (tests; benchmark fallback)

Imports only :mod:`acquisition` (the raw format) and :mod:`chdl.dataset` (the dataset format).
"""
