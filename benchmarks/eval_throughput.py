"""Batched evaluation throughput against the model's own inference throughput, in one run:

    python benchmarks/eval_throughput.py RUN_DIR --bundle bundles/conv_lora_demo.json [--batch 1 4] [--rounds 2]

For each batch size: ``configs/evaluate.json`` layered on ``--bundle`` with the trained run ``RUN_DIR`` (its
``run_config.json`` names backbone and image size, ``parameter_report.json`` the tuner) writes
``timing.images_per_s`` into its ``metrics.json``
(the evaluator's whole run: loading, prediction, restoring each mask to its original size, scoring, writing PNGs);
``medsam-peft bench --mode infer`` measures the same backbone, tuner and size at the same batch (forward only, one
warm-up). Prints both and their ratio (bench images/s / evaluation images/s); each round alternates the order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def evaluate_images_per_s(bundle: str, run_dir: Path, batch: int, eval_dir: Path) -> float:
    config = json.dumps([bundle, "configs/evaluate.json"])
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--output_dir", str(run_dir),
               "--eval_dir", str(eval_dir), "--eval_batch_size", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"evaluation failed (batch {batch}):\n{done.stderr[-2000:]}")
    return float(json.loads((eval_dir / "metrics.json").read_text())["timing"]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a training run's output folder (run_config.json, checkpoints/)")
    parser.add_argument("--bundle", default="bundles/conv_lora_demo.json")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed inference steps per bench case")
    args = parser.parse_args()

    from medsam_peft.benchmark import BenchCase, run_case

    run = json.loads((args.run_dir / "run_config.json").read_text())
    run["tuner"] = json.loads((args.run_dir / "parameter_report.json").read_text())["tuner"]
    results: dict[int, dict[str, list[float]]] = {b: {"eval": [], "bench": []} for b in args.batch}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for batch in args.batch if round_index % 2 == 0 else reversed(args.batch):
                eval_ips = evaluate_images_per_s(args.bundle, args.run_dir, batch, Path(scratch) / f"eval{batch}")
                case = BenchCase(run["backbone"], run["tuner"], int(run["image_size"]), run.get("precision", "auto"),
                                 batch, "infer", repeats=args.repeats)
                bench_ips = run_case(case)["images_per_s"]
                results[batch]["eval"].append(eval_ips)
                results[batch]["bench"].append(bench_ips)
                print(f"  round {round_index + 1} batch {batch}: evaluation {eval_ips:.2f} images/s, "
                      f"bench infer {bench_ips:.2f} images/s", flush=True)
    print(f"\n{run['backbone']} + {run['tuner']} at {run['image_size']}, medians over {args.rounds} rounds")
    print("| batch | evaluate.json images/s | bench infer images/s | bench / evaluate |")
    print("|---|---|---|---|")
    for batch, r in results.items():
        e, b = statistics.median(r["eval"]), statistics.median(r["bench"])
        print(f"| {batch} | {e:.2f} | {b:.2f} | {b / e:.2f} |")


if __name__ == "__main__":
    main()
