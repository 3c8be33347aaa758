"""3-D CT sliced to 2-D: train the SAM-PARSER CT bundle (tiny) on the real InVesalius head CT, then evaluate per
volume: the prediction NIfTI keeps the input's grid and affine, and its 3-D Dice is what volume_dice.json says."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow

from medsam_peft.data import prepare_invesalius_ct

REPO = Path(__file__).resolve().parents[2]


def test_ct_bundle_trains_then_scores_volumes(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prepare_invesalius_ct(tmp_path / "ct", min_pixels=2000)
    common = dict(bundle_root=str(REPO), dataset_dir=str(tmp_path / "ct"), output_dir=str(tmp_path / "run"),
                  backbone="vit_tiny", checkpoint="", image_size=64, max_epochs=1, num_workers=0, overlays=0,
                  experiment_name="ct")
    train = ConfigWorkflow(config_file="bundles/sam_parser_abdomenct.json", workflow_type="train", **common)
    train.initialize()
    train.run()
    train.finalize()
    evaluate = ConfigWorkflow(config_file=["bundles/sam_parser_abdomenct.json", "configs/evaluate_volumes.json"],
                              workflow_type="infer", **common)
    evaluate.initialize()
    evaluate.run()
    report = json.loads((tmp_path / "run" / "eval_volumes" / "volume_dice.json").read_text())
    written = nib.load(tmp_path / "run" / "eval_volumes" / "cranium_pred.nii.gz")
    label_nii = nib.load(tmp_path / "ct" / "volumes" / "label.nii.gz")
    assert written.shape == label_nii.shape
    np.testing.assert_allclose(written.affine, label_nii.affine)
    pred, label = np.asarray(written.dataobj), np.asarray(label_nii.dataobj)
    for label_id in ("1", "2"):
        p, g = pred == int(label_id), label == int(label_id)
        # the bone prediction is written first and wins overlaps, so only its Dice is exact from the file
        if label_id == "1":
            assert report["volumes"]["cranium"][label_id] == 2 * (p & g).sum() / (p.sum() + g.sum())
        assert 0.0 <= report["volumes"]["cranium"][label_id] <= 1.0
        prompted = [z for z in range(label.shape[2]) if g[:, :, z].any()]
        assert not p[:, :, [z for z in range(label.shape[2]) if z not in prompted]].any()  # no box, no prediction
