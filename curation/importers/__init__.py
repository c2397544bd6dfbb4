"""Importers: public benchmarks converted into the curated dataset format (``chdl.dataset/1``).

* :mod:`curation.importers.moving_mnist` — Moving MNIST (Srivastava et al. 2015) generated from real
  MNIST digits: 64×64, two bouncing digits, 10 → 10 frames.
* :mod:`curation.importers.weatherbench` — WeatherBench 5.625° ERA5 netCDF files (32×64 grid),
  12 → 12 hourly frames, per-variable normalisation, quantised to uint16.
* :mod:`curation.importers.video` — video files (any format FFmpeg decodes, via OpenCV): grayscale,
  centre-cropped and resized clips of ``in + out`` frames, split by time blocks within each video.

All three write through :class:`chdl.dataset.DatasetWriter` via :func:`curation.importers.common.write_sequences`,
so their output is complete-marked (an interrupted import is never read as a dataset) and an existing
output is refused unless ``overwrite``. Bad input raises :class:`ImporterInputError` whose message names the
file and the problem. Docs: ``docs/importers.md``.
"""

from curation.importers.common import ImporterInputError

__all__ = ["ImporterInputError"]
