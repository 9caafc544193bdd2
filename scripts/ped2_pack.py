"""Ped2 as a compact, lossy copy that fits a device call, and back.

A device machine receives at most 64 MiB of working tree; Ped2's JPEG frames
are 109 MB. `pack` re-encodes every video as grayscale H.264 (ffmpeg's
libx264, CRF 18 by default: ~10 MB for all 28 videos, mean PSNR ~43 dB
against the JPEGs) and copies the labels; `unpack` decodes them with OpenCV
back into the frame-folder layout the builder reads (NNN.jpg, JPEG quality
95 like the source) and checks every video's frame count. The copy is lossy:
results on it are labelled as such (README "Run on a GPU machine").

  python scripts/ped2_pack.py pack ../shared/data/ped2 .carry/ped2 [--crf 18] [--ffmpeg PATH]
  python scripts/ped2_pack.py unpack .carry/ped2 /tmp/ped2

ffmpeg: --ffmpeg, else `ffmpeg` on PATH, else the binary of the
imageio-ffmpeg package (`pip install imageio-ffmpeg`; only `pack` needs it).
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import cv2

SPLITS = ("train", "test")
LABELS = ("gt_frame", "gt_pixel")
MANIFEST = "pack.json"


def _ffmpeg(path):
  if path:
    return path
  found = shutil.which("ffmpeg")
  if found:
    return found
  try:
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  except ImportError:
    sys.exit("ped2_pack.py: error: no ffmpeg: pass --ffmpeg PATH, put ffmpeg on "
             "PATH or pip install imageio-ffmpeg")
  return imageio_ffmpeg.get_ffmpeg_exe()


def _videos(root):
  for split in SPLITS:
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
      sys.exit(f"ped2_pack.py: error: {folder} is not a folder")
    for video in sorted(os.listdir(folder)):
      yield split, video


def pack(root, out, crf, ffmpeg):
  ffmpeg = _ffmpeg(ffmpeg)
  jobs = []
  for split, video in _videos(root):
    frames = sorted(f for f in os.listdir(os.path.join(root, split, video))
                    if f.endswith(".jpg"))
    if frames != [f"{i:03d}.jpg" for i in range(len(frames))]:
      sys.exit(f"ped2_pack.py: error: {root}/{split}/{video}: frames are not "
               f"000.jpg ... {len(frames) - 1:03d}.jpg")
    jobs.append((split, video, len(frames)))
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  for split in SPLITS:
    os.makedirs(os.path.join(tmp, split))

  def encode(job):
    split, video, _ = job
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-framerate", "25",
         "-i", os.path.join(root, split, video, "%03d.jpg"),
         "-c:v", "libx264", "-preset", "slow", "-crf", str(crf),
         "-pix_fmt", "gray", os.path.join(tmp, split, video + ".mp4")],
        check=True)

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    list(pool.map(encode, jobs))
  for name in LABELS:
    shutil.copytree(os.path.join(root, name), os.path.join(tmp, name))
  with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
    json.dump({"source": os.path.abspath(root), "codec": "libx264 gray",
               "crf": crf, "frames": {f"{s}/{v}": n for s, v, n in jobs}},
              f, indent=1)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(out) for f in fs)
  print(f"{len(jobs)} videos -> {out} ({size / 1e6:.1f} MB, CRF {crf})")


def unpack(packed, out):
  with open(os.path.join(packed, MANIFEST), encoding="utf-8") as f:
    manifest = json.load(f)
  tmp = out + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)

  def decode(item):
    key, count = item
    folder = os.path.join(tmp, key)
    os.makedirs(folder)
    cap = cv2.VideoCapture(os.path.join(packed, key + ".mp4"))
    n = 0
    while True:
      ok, frame = cap.read()
      if not ok:
        break
      gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
      cv2.imwrite(os.path.join(folder, f"{n:03d}.jpg"), gray,
                  [cv2.IMWRITE_JPEG_QUALITY, 95])
      n += 1
    cap.release()
    return key, count, n

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    bad = [(k, c, n) for k, c, n in pool.map(decode, manifest["frames"].items())
           if c != n]
  if bad:
    sys.exit("ped2_pack.py: error: frame counts differ (video, expected, "
             f"decoded): {bad}")
  for name in LABELS:
    shutil.copytree(os.path.join(packed, name), os.path.join(tmp, name))
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  print(f"{len(manifest['frames'])} videos, "
        f"{sum(manifest['frames'].values())} frames -> {out}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("pack")
  p.add_argument("root")
  p.add_argument("out")
  p.add_argument("--crf", type=int, default=18)
  p.add_argument("--ffmpeg")
  u = sub.add_parser("unpack")
  u.add_argument("packed")
  u.add_argument("out")
  args = parser.parse_args()
  if args.cmd == "pack":
    pack(args.root, args.out, args.crf, args.ffmpeg)
  else:
    unpack(args.packed, args.out)


if __name__ == "__main__":
  main()
