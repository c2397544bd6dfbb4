#!/usr/bin/env python
"""Sub-pixel accuracy of the global motion estimate of ``curation.qc`` on known shifts (docs/curation.md).

Frames of the four allowed OpenCV example videos (tree.avi, box.mp4, cup.mp4, Megamind.avi; see
tools/fetch_opencv_videos.sh) are shifted by known sub-pixel amounts (Fourier shift, uniform in
+-8 px per axis, then both frames cropped to the central 80 % so no wrapped border is seen), each
frame gets its own Gaussian noise (2 grey levels), and the displacement is measured by

* ``qc``: what curate uses (``qc.SequenceQC.displacement``: phase correlation on the registration
  scale, parabola sub-pixel peak, block-wise consensus);
* ``skimage``: ``skimage.registration.phase_cross_correlation`` with 100x upsampling, full resolution
  (the accuracy reference).

Two cases: the whole frame moves; and the same with a local mover -- a patch of another frame, a
ninth of the view, moving by an unrelated 3-10 px -- which the global estimate should ignore.

    python tools/bench_registration.py --videos data/opencv-videos
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import qc  # noqa: E402

ALLOWED = ("tree.avi", "box.mp4", "cup.mp4", "Megamind.avi")


def frames_of(path: Path, every: int = 15) -> list[np.ndarray]:
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out, i = [], 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        if i % every == 7:
            out.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32))
        i += 1
    return out


def shifted(img: np.ndarray, d: np.ndarray) -> np.ndarray:
    """img moved by content displacement d = (dx, dy) (out(x) = img(x - d)), by a Fourier shift."""
    from scipy.ndimage import fourier_shift

    return np.real(np.fft.ifft2(fourier_shift(np.fft.fft2(img), (d[1], d[0])))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="data/opencv-videos", help="folder with the four allowed videos (tools/fetch_opencv_videos.sh)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the known shifts (default 0)")
    a = ap.parse_args()
    missing = [n for n in ALLOWED if not (Path(a.videos) / n).is_file()]
    if missing:  # (it printed an empty table, or one of fewer videos, with exit 0)
        ap.error(f"--videos {a.videos}: {', '.join(missing)} missing (tools/fetch_opencv_videos.sh fetches all four)")
    from skimage.registration import phase_cross_correlation

    rng = np.random.default_rng(a.seed)
    err: dict[str, list[float]] = {}
    n_pairs = 0
    for name in ALLOWED:
        frames = frames_of(Path(a.videos) / name)
        for k, img in enumerate(frames):
            h, w = img.shape
            y0, x0 = h // 10, w // 10
            for case in ("global", "global + local mover"):
                d = rng.uniform(-8, 8, 2)
                b = shifted(img, d)
                if case != "global":  # paste a moving patch (another frame's content) into both frames
                    other = frames[(k + len(frames) // 2) % len(frames)]
                    ph, pw = h // 3, w // 3
                    py, px = h // 3, w // 3
                    m = rng.uniform(3, 10) * np.array([np.cos(t := rng.uniform(0, 2 * np.pi)), np.sin(t)])
                    img_c = img.copy()
                    img_c[py:py + ph, px:px + pw] = other[py:py + ph, px:px + pw]
                    moved = shifted(other, d + m)
                    b[py:py + ph, px:px + pw] = moved[py:py + ph, px:px + pw]
                    a_img = img_c
                else:
                    a_img = img
                fa = a_img[y0:h - y0, x0:w - x0] + rng.normal(0, 2, (h - 2 * y0, w - 2 * x0)).astype(np.float32)
                fb = b[y0:h - y0, x0:w - x0] + rng.normal(0, 2, (h - 2 * y0, w - 2 * x0)).astype(np.float32)
                pair = np.clip(np.stack([fa, fb]), 0, 255)
                est_qc = qc.SequenceQC(pair, np.ones(2, bool), 255.0).displacement(0, 1)
                s, _, _ = phase_cross_correlation(pair[0], pair[1], upsample_factor=100)
                est_sk = -np.array([s[1], s[0]])  # skimage: the shift that registers b onto a
                err.setdefault(f"{case}: qc", []).append(float(np.hypot(*(est_qc - d))))
                err.setdefault(f"{case}: skimage", []).append(float(np.hypot(*(est_sk - d))))
                n_pairs += 1
    print(f"# bench_registration {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} {os.cpu_count()} cores, {n_pairs} pairs")
    print("| case: method | rms error (px) | median (px) | 95th percentile (px) | > 1 px |")
    print("|---|---|---|---|---|")
    for k, v in err.items():
        v = np.array(v)
        print(f"| {k} | {np.sqrt(np.mean(v ** 2)):.3f} | {np.median(v):.3f} | {np.percentile(v, 95):.3f} | {int((v > 1).sum())}/{len(v)} |")


if __name__ == "__main__":
    main()
