"""chdl — capture, curate and predict wafer dicing-lane video.

Two things live in this package and are kept apart:

* the curated dataset format (:mod:`chdl.dataset`, :mod:`chdl.torch_dataset`), which curation writes and
  diffuma reads, and which imports neither of them;
* the click command line (:mod:`chdl.cli`), which composes every stage.
"""

# Raised at each release (0.2.0, 2026-12-02: provenance, traceable eval and bench records). Between releases the
# git commit and the source digest that chdl.provenance records tell builds apart; the string alone cannot.
__version__ = "0.2.0"
