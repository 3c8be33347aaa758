"""Every seed-experiment bundle: the standard top-level keys, and one real epoch each on small real data
(Colin27/AAL slices standing in for the dataset) with a tiny SAM, through its own loss, prompts and metrics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from medsam_peft.data import prepare_colin27_aal
from tests.conftest import COLIN27_DIR

REPO = Path(__file__).resolve().parents[2]
SEED_BUNDLES = sorted(p.stem for p in (REPO / "bundles").glob("*.json") if p.stem not in ("metadata", "conv_lora_demo"))
STANDARD_KEYS = ("bundle_root", "dataset_dir", "output_dir", "backbone", "checkpoint", "tuner", "image_size",
                 "max_epochs", "batch_size", "learning_rate", "device", "tracking_uri", "experiment_name")


def test_one_bundle_per_seed_experiment() -> None:
    expected = {f"conv_lora_{d}" for d in ("kvasir", "cvc_clinicdb", "isic2017", "camo", "sbu", "leaf", "road")}
    expected |= {f"sam_parser_{d}" for d in ("abdomenct", "coco2017", "voc2012", "nwpu", "whu")}
    assert expected <= set(SEED_BUNDLES)


@pytest.mark.parametrize("name", ["conv_lora_demo", *SEED_BUNDLES])
def test_standard_top_level_keys(name) -> None:
    config = json.loads((REPO / "bundles" / f"{name}.json").read_text())
    assert all(key in config for key in STANDARD_KEYS), [k for k in STANDARD_KEYS if k not in config]


@pytest.mark.parametrize("name", ["conv_lora_demo", *SEED_BUNDLES])
def test_every_bundle_takes_the_interactive_prompts_with_its_settings(name, monkeypatch) -> None:
    """README: '--prepare_batch %configs/prompts.json::interactive' works on any bundle, and the annotator reads the
    bundle's top-level settings (a --centre_probability override reaches it)."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / f"{name}.json"))
    parser.update({"prepare_batch": "%configs/prompts.json::interactive", "centre_probability": 1.0, "clicks": 3,
                   "supervise_every_round": True, "hard_negatives": 2})
    annotator = parser.get_parsed_content("prepare_batch").annotator
    assert (annotator.centre_probability, annotator.clicks, annotator.supervise_every_round) == (1.0, 3, True)
    assert annotator.hard_negatives == 2
    demo = name == "conv_lora_demo_interactive"  # the demo's own settings, else the defaults
    assert (annotator.max_corrections, annotator.box_probability, annotator.multimask) == (4 if demo else 7, 0.5, demo)
    assert annotator.click_radius == 5.0


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed_data")
    prepare_colin27_aal(root, source=COLIN27_DIR, structures=(77, 78), slice_step=8)
    return root


@pytest.mark.parametrize("name", ["conv_lora_kvasir", "conv_lora_sbu", "conv_lora_isic2017", "sam_parser_abdomenct",
                                  "sam_parser_voc2012"])
def test_bundle_trains_one_epoch_with_its_own_loss_and_metrics(name, small_data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # configs/ is pulled in by path from the repository root
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / f"{name}.json"), workflow_type="train", bundle_root=str(REPO),
        dataset_dir=str(small_data), output_dir=str(tmp_path), backbone="vit_tiny", checkpoint="", image_size=128,
        max_epochs=1, num_workers=0, overlays=1, accumulation_steps=2, experiment_name=name)
    workflow.initialize()
    workflow.run()
    config = json.loads((REPO / "bundles" / f"{name}.json").read_text())
    key_metric = workflow.parser.get_parsed_content("key_metric")
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert key_metric in metrics and math.isfinite(metrics[key_metric])
    if name.startswith("conv_lora"):
        assert workflow.parser.get_parsed_content("squash") is True and config["prepare_batch"].endswith("::none")
    assert (tmp_path / "adapter_final.safetensors").is_file() and (tmp_path / "checkpoints" / "adapter_best.safetensors").is_file()
    workflow.finalize()


def test_missing_dataset_stops_with_the_prepare_command(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/conv_lora_kvasir.json",
                           "--dataset_dir", str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"error: no prepared kvasir data: {tmp_path / 'nowhere' / 'datalist.json'} does not exist; prepare it with "
        f"`medsam-peft prepare kvasir --root {tmp_path / 'nowhere'}`, or point the bundle at a prepared copy with "
        "--dataset_dir DIR")
    assert "Traceback" not in done.stderr
    assert not (REPO / "runs" / "conv_lora_kvasir").exists()  # a refused run leaves nothing behind


def test_early_stopping_ends_a_run_that_stops_improving(small_data, tmp_path, monkeypatch) -> None:
    """learning_rate 0: the key metric cannot improve on the validation before training (the zero-shot baseline
    counts), so patience 1 stops the 6-epoch run after its first epoch."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "conv_lora_kvasir.json"), workflow_type="train", bundle_root=str(REPO),
        dataset_dir=str(small_data), output_dir=str(tmp_path), backbone="vit_tiny", checkpoint="", image_size=128,
        max_epochs=6, num_workers=0, overlays=0, learning_rate=0.0, early_stop_patience=1, experiment_name="stop")
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and trainer.state.max_epochs == 6
    workflow.finalize()


def test_every_metric_a_bundle_can_name_has_its_direction() -> None:
    """A key metric where lower is better must be judged so everywhere (best adapter, early stopping, report)."""
    from monai.bundle import ConfigParser

    from medsam_peft.engines import interactive_metrics, lower_is_better, semantic_metrics

    names = set(interactive_metrics(5)) | set(semantic_metrics(3, ["a", "b", "c"])) | {"val_miou", "val_foreground_miou"}
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "metrics.json"))
    for section, content in parser.get().items():
        if isinstance(content, dict):
            names |= set(content)
    lower = {name for name in names if lower_is_better(name)}
    assert lower == {"val_mae", "val_ber", "val_ber_dataset", "val_noc85", "val_noc90"}, sorted(lower)
    assert "val_mean_dice" in names and "val_dice_click3" in names and "val_sm" in names


@pytest.mark.parametrize(("key_metric", "lower"), [("val_noc85", True), ("val_dice_click3", False)])
def test_key_metric_direction_reaches_every_judge(key_metric, lower, small_data, tmp_path, monkeypatch) -> None:
    """--key_metric val_noc85 on the interactive demo: the best adapter, the report, the evaluator's best metric and
    early stopping all prefer fewer clicks (they used to keep the epoch needing the most)."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "conv_lora_demo_interactive.json"))
    parser.update({"key_metric": key_metric, "dataset_dir": str(small_data), "output_dir": str(tmp_path),
                   "backbone": "vit_tiny", "checkpoint": "", "image_size": 128, "early_stop_patience": 2})
    assert parser.get_parsed_content("validate#best_checkpoint").lower_is_better is lower
    assert parser.get_parsed_content("train#progress_report").lower_is_better is lower
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert evaluator.metric_cmp_fn(3.0, 4.0) is lower  # 3 clicks after 4: better only when lower is better
    stop = parser.get_parsed_content("validate#early_stop")

    class State:
        metrics = {key_metric: 3.0}

    assert stop.score_function(type("Engine", (), {"state": State})()) == (-3.0 if lower else 3.0)
