"""The benchmark harness measures what it says (a real step in a subprocess) and takes ratios in the same run."""

from __future__ import annotations

import pytest

from medsam_peft.benchmark import BenchCase, add_ratios, format_table, merge_rounds, run_case
from medsam_peft.tuners import build_tuned_sam


def test_run_case_times_a_real_training_step_and_reports_the_trainable_count() -> None:
    result = run_case(BenchCase("vit_tiny", "conv_lora", 128, "float32", 2, "train", warmup=1, repeats=2))
    assert result["trainable"] == build_tuned_sam("vit_tiny", tuner="conv_lora").parameter_report()["trainable"]
    assert len(result["times_s"]) == 2 and all(t > 0 for t in result["times_s"])
    assert result["images_per_s"] == pytest.approx(2 / result["median_s"])
    assert result["peak_gib"] > 0.1  # the subprocess's own RSS high-water mark (torch alone is > 100 MB)


def test_ratios_are_taken_against_the_baseline_of_the_same_configuration() -> None:
    def row(tuner, mode, size, median, peak):
        return {"backbone": "vit_b", "tuner": tuner, "mode": mode, "size": size, "dtype": "bfloat16", "batch": 1,
                "device": "cpu", "median_s": median, "images_per_s": 1 / median, "peak_gib": peak, "trainable": 1}

    results = add_ratios([row("lora", "train", 256, 2.0, 4.0), row("conv_lora", "train", 256, 2.2, 5.0),
                          row("conv_lora", "train", 512, 9.0, 8.0), row("base", "infer", 256, 1.0, 2.0),
                          row("lora", "infer_merged", 256, 1.02, 2.0)])
    assert [r["ratio"] for r in results] == [1.0, pytest.approx(1.1), None, 1.0, pytest.approx(1.02)]
    assert results[1]["mem_ratio"] == pytest.approx(1.25) and results[4]["baseline"] == "base/infer"
    assert "| conv_lora | train" in format_table(results)


def test_rounds_merge_into_the_median_of_every_step_and_the_highest_peak() -> None:
    rounds = [{"batch": 2, "times_s": [1.0, 5.0], "median_s": 3.0, "peak_gib": 4.0},
              {"batch": 2, "times_s": [2.0, 2.5, 9.0], "median_s": 2.5, "peak_gib": 4.5}]
    merged = merge_rounds(rounds)
    assert merged["times_s"] == [1.0, 5.0, 2.0, 2.5, 9.0] and merged["median_s"] == 2.5
    assert merged["images_per_s"] == 2 / 2.5 and merged["peak_gib"] == 4.5 and merged["rounds"] == 2
