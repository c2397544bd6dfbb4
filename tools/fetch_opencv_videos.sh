#!/usr/bin/env bash
# Fetch the four OpenCV example videos chdl may use for development from Debian's opencv-doc package:
#   bash tools/fetch_opencv_videos.sh [OUT_DIR]          (default: data/opencv-videos/, git-ignored)
# then make the dataset (docs/importers.md, "Real footage: chdl import video"):
#   chdl import video data/opencv-videos/{tree.avi,box.mp4,cup.mp4,Megamind.avi} --out data/opencv.zarr \
#       --size 120x160 --in-frames 5 --out-frames 5 --train-stride 3 --val-stride 5
#
# ONLY tree.avi, box.mp4, cup.mp4 and Megamind.avi are extracted. Every other video or image set in the
# package (vtest.avi, Megamind_bugy.avi, ..., any ViSP images) is HELD OUT for independent evaluation:
# never extract, decode, train, tune or test on it. The .deb is listed (dpkg-deb -c) only to find the
# exact member paths of the four allowed files; tar is then given those explicit paths and nothing else.
# In the package box.mp4 and cup.mp4 are stored gzipped (.mp4.gz, by dh_compress); they are unpacked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/opencv-videos}"
python="${PYTHON:-$root/.venv/bin/python}"
ALLOWED=(tree.avi box.mp4 cup.mp4 Megamind.avi)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. download the .deb (needs apt lists; refresh them once if the download fails for lack of them)
( cd "$tmp" && apt-get download opencv-doc ) || {
  echo "apt-get download failed; running apt-get update and retrying" >&2
  apt-get update >&2
  ( cd "$tmp" && apt-get download opencv-doc )
}
deb="$(ls "$tmp"/opencv-doc_*.deb)"
version="$(dpkg-deb -f "$deb" Version)"
echo "package: opencv-doc $version ($(basename "$deb"))" >&2

# 2. the exact member path of each allowed file: basename NAME or NAME.gz, exactly one match each
dpkg-deb --fsys-tarfile "$deb" | tar -t > "$tmp/members.txt"
members=()
for name in "${ALLOWED[@]}"; do
  mapfile -t found < <(awk -v a="/$name" -v b="/$name.gz" \
    '{ n = length($0); if (substr($0, n - length(a) + 1) == a || substr($0, n - length(b) + 1) == b) print }' \
    "$tmp/members.txt")
  if [ "${#found[@]}" -ne 1 ]; then
    echo "error: expected exactly one member named $name[.gz] in $(basename "$deb"), found ${#found[@]}: ${found[*]:-none}" >&2
    exit 1
  fi
  members+=("${found[0]}")
done

# 3. extract ONLY those members (explicit paths), unpack .gz, copy to OUT_DIR; and the package's copyright file,
#    whose terms the videos come under (its "Files: *" stanza: Debian lists no separate ones for samples/data)
mkdir -p "$tmp/x"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" -- "${members[@]}"
mkdir -p "$out"
dpkg-deb --fsys-tarfile "$deb" | tar -xO -- ./usr/share/doc/opencv-doc/copyright > "$out/COPYRIGHT.part"
mv -f -- "$out/COPYRIGHT.part" "$out/COPYRIGHT"
echo "COPYRIGHT <- ./usr/share/doc/opencv-doc/copyright" >&2
for i in "${!ALLOWED[@]}"; do
  name="${ALLOWED[$i]}"
  src="$tmp/x/${members[$i]#./}"
  if [[ "$src" == *.gz ]]; then gzip -dc -- "$src" > "$out/$name.part"; else cp -- "$src" "$out/$name.part"; fi
  mv -f -- "$out/$name.part" "$out/$name"
  echo "$name <- ${members[$i]}" >&2
done
{
  echo "opencv-doc $version ($(basename "$deb")), extracted by tools/fetch_opencv_videos.sh"
  for i in "${!ALLOWED[@]}"; do echo "${ALLOWED[$i]} <- ${members[$i]}"; done
  ( cd "$out" && sha256sum -- "${ALLOWED[@]}" )
} > "$out/SOURCE.txt"

# 4. what we got: size on disk, frames the container lists and frames FFmpeg decodes (they differ when a file
#    stores empty "repeat the previous frame" packets, as tree.avi does), frame rate, resolution, codec
OPENCV_FFMPEG_LOGLEVEL=-8 "$python" - "$out" "${ALLOWED[@]}" <<'PY'
import sys
from pathlib import Path

import cv2

out = Path(sys.argv[1])
print(f"{'file':<14}{'bytes':>11}{'listed':>8}{'decoded':>8}{'fps':>8}{'seconds':>9}  size     codec")
for name in sys.argv[2:]:
    path = out / name
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps, w, h = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    listed, fourcc = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FOURCC))
    codec = "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    seconds = max(n, listed) / fps if fps else float("nan")
    print(f"{name:<14}{path.stat().st_size:>11,}{listed:>8}{n:>8}{fps:>8.2f}{seconds:>9.1f}  {w}x{h:<4} {codec}")
PY
echo "wrote $out (see $out/SOURCE.txt)" >&2
