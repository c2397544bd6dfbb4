"""chdl — capture, curate and predict wafer dicing-lane video.

Two things live in this package and are kept apart:

* the curated dataset format (:mod:`chdl.dataset`, :mod:`chdl.torch_dataset`), which curation writes and
  diffuma reads, and which imports neither of them;
* the click command line (:mod:`chdl.cli`), which composes every stage.
"""

__version__ = "0.1.0"
