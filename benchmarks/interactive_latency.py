"""Serving latency of an exported bundle, as the MONAI Label app runs it (``BundlePredictor``), in one process:

    python benchmarks/interactive_latency.py BUNDLE_DIR [--volume ch2.nii.gz --labels aal.nii.gz --label 78]
        [--repeats 5] [--slices 20] [--cpu-allocator reuse|system|compare]

1. A 2-D slice of the volume: the first prompt (encoder + decoder) against a second prompt on the same image
   (decoder only, embedding cache), median of ``--repeats`` fresh images each; prints the ratio.
2. Propagation from a box on the middle slice of the structure within a roi of ``--slices`` slices: wall time, encoder
   and decoder passes, against ``--slices`` bare encoder + decoder passes on those slices (the least work there is).

``--cpu-allocator`` is the label server's ``--conf cpu_allocator`` (default reuse); ``compare`` runs the benchmark
once with each in a fresh process (the setting cannot be undone in one) and prints the ratios system / reuse.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--volume", default="/usr/share/mricron/templates/ch2.nii.gz")
    parser.add_argument("--labels", default="/usr/share/mricron/templates/aal.nii.gz")
    parser.add_argument("--label", type=int, default=78, help="AAL id (78 = right thalamus)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--cpu-allocator", default="reuse", choices=["reuse", "system", "compare"])
    args = parser.parse_args()
    if args.cpu_allocator == "compare":
        compare_allocators()
        return

    from medsam_peft.data.volumes import slice_to_image, to_uint8
    from medsam_peft.label import BundlePredictor
    from medsam_peft.utils import configure_cpu_allocator

    configure_cpu_allocator(args.cpu_allocator)

    predictor = BundlePredictor(args.bundle)
    predictor.model()
    volume = np.asarray(nib.load(args.volume).dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(args.labels).dataobj) == args.label
    present = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
    middle = present[len(present) // 2]
    scaled = to_uint8(volume)
    i, j = np.nonzero(labels[:, :, middle])

    first, second = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            k = present[r % len(present)]
            path = Path(tmp) / f"slice_{k}.png"
            Image.fromarray(slice_to_image(scaled[:, :, k])).save(path)
            mask = slice_to_image(labels[:, :, k])
            rows, cols = np.nonzero(mask)
            box = [int(cols.min()) - 3, int(rows.min()) - 3, int(cols.max()) + 3, int(rows.max()) + 3]
            click = [int(np.median(cols)), int(np.median(rows))]
            predictor.embeddings.clear()
            start = time.perf_counter()
            _, one, _ = predictor.segment_file(path, {"roi": box})
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            _, two, _ = predictor.segment_file(path, {"roi": box, "foreground": [click]})
            second.append(time.perf_counter() - start)
            assert one["encoder_passes"] == 1 and two["encoder_passes"] == 0
    a, b = statistics.median(first), statistics.median(second)
    print(f"2-D prompt, first on an image: {a:.3f} s; second on the same image: {b:.3f} s; ratio {b / a:.3f}")

    half = args.slices // 2
    roi = [int(i.min()) - 3, int(i.max()) + 3, int(j.min()) - 3, int(j.max()) + 3, middle - half,
           middle - half + args.slices - 1]
    predictor.embeddings.clear()
    start = time.perf_counter()
    _, details, _ = predictor.segment_file(args.volume, {"roi": roi, "slice": middle, "propagate": True})
    propagation = time.perf_counter() - start
    # the bare work: one encoder and one decoder pass on each of the roi's slices, nothing else
    from medsam_peft.label.predictor import Prompts

    slices = [slice_to_image(scaled[:, :, k]).astype(np.float32) / 255.0 for k in range(roi[4], roi[5] + 1)]
    image_box = [float(roi[0]), float(labels.shape[1] - 1 - roi[3]), float(roi[1]), float(labels.shape[1] - 1 - roi[2])]
    predictor.embeddings.clear()
    start = time.perf_counter()
    for plane in slices:
        predictor.predict_image(plane, Prompts(image_box, [], []))
    bare = time.perf_counter() - start
    print(f"propagation over a {args.slices}-slice roi: {propagation:.1f} s, {len(details['slices'])} slices, "
          f"{details['encoder_passes']} encoder + {details['decoder_passes']} decoder passes; {len(slices)} bare "
          f"encoder+decoder passes: {bare:.1f} s; ratio {propagation / bare:.2f}")


def compare_allocators() -> None:
    """The benchmark in two fresh processes, glibc's allocator and the server's default, and the time ratios."""
    argv = [a for a in sys.argv[1:] if a not in ("--cpu-allocator=compare", "compare", "--cpu-allocator")]
    numbers = {}
    for mode in ("system", "reuse"):
        out = subprocess.run([sys.executable, __file__, *argv, "--cpu-allocator", mode], capture_output=True,
                             text=True, check=True).stdout
        print(f"[{mode}] " + out.strip().replace("\n", f"\n[{mode}] "))
        first = re.search(r"first on an image: ([\d.]+) s; second on the same image: ([\d.]+) s", out)
        propagation = re.search(r"roi: ([\d.]+) s", out)
        numbers[mode] = (float(first.group(1)), float(first.group(2)), float(propagation.group(1)))
    names = ("first prompt", "second prompt", "propagation")
    print("system / reuse: " + ", ".join(f"{n} {s / r:.2f}x" for n, s, r in zip(names, numbers["system"],
                                                                              numbers["reuse"])))


if __name__ == "__main__":
    main()
