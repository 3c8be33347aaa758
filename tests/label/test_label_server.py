"""The MONAI Label app, served for real: `python -m monailabel.main start_server` on 127.0.0.1 with a bundle exported
from a tiny LiteMedSAM fine-tune on Colin27/AAL, prompted with boxes and points over HTTP."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from medsam_peft.cli import main as cli_main
from medsam_peft.tuners.adapter_io import tensor_checksum
from tests.conftest import COLIN27_DIR

REPO = Path(__file__).resolve().parents[2]
RIGHT_THALAMUS = 78  # AAL id; the demo trains on left structures and validates on the right ones


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    # 1. a tiny real fine-tune: LiteMedSAM (real weights) + Conv-LoRA, one epoch on every 12th Colin27 slice
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/conv_lora_demo.json")]
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(root / "data"), "output_dir": str(root / "run"),
                 "slice_step": "12", "max_epochs": "1", "overlays": "0", "experiment_name": "label_test"}
    for key, value in overrides.items():
        args += [f"--{key}", value]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # 2. the app folder with the exported bundle and a copy whose adapter misses a tensor
    app = root / "app"
    app.mkdir()
    shutil.copy(REPO / "apps/medsam_label/main.py", app / "main.py")
    bundle = app / "model" / "thalamus"
    assert cli_main(["export-bundle", str(root / "run"), str(bundle), "--label", "subcortical"]) == 0
    broken = app / "model" / "mismatched"
    shutil.copytree(bundle, broken)
    payload = torch.load(broken / "models/model.pt", weights_only=True)
    payload["state_dict"].pop(sorted(payload["state_dict"])[0])
    payload["metadata"]["tensor_sha256"] = tensor_checksum(payload["state_dict"])  # a whole file, of another model
    torch.save(payload, broken / "models/model.pt")
    # a copy damaged in transit: one value of one tensor changed, the recorded checksum kept
    corrupt = app / "model" / "corrupt"
    shutil.copytree(bundle, corrupt)
    payload = torch.load(corrupt / "models/model.pt", weights_only=True)
    first = sorted(payload["state_dict"])[0]
    payload["state_dict"][first].view(-1)[0] += 1.0
    torch.save(payload, corrupt / "models/model.pt")
    # the same adapter declared prompt-free (as a Conv-LoRA bundle trained without prompts is): the automatic task
    automatic = app / "model" / "automatic"
    shutil.copytree(bundle, automatic)
    config = json.loads((automatic / "configs/inference.json").read_text())
    (automatic / "configs/inference.json").write_text(json.dumps({**config, "prompt": "none"}))

    # 3. studies: a validation slice (PNG) with its right-thalamus mask, and the whole Colin27 volume
    studies = root / "studies"
    studies.mkdir()
    datalist = json.loads((root / "data" / "datalist.json").read_text())
    entries = [e for e in datalist["validation"] if e["structure"] == "Thalamus_R"]
    entry = max(entries, key=lambda e: int((np.asarray(Image.open(root / "data" / e["label"])) > 0).sum()))
    shutil.copy(root / "data" / entry["image"], studies / "slice.png")
    shutil.copy(COLIN27_DIR / "ch2.nii.gz", studies / "colin27.nii.gz")
    (studies / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    outside = root / "outside.png"  # a readable image the server must not read: it is not in the datastore
    shutil.copy(root / "data" / entry["image"], outside)

    port = _free_port()
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies",
               str(studies), "--conf", "models", "thalamus,mismatched,corrupt,automatic", "--conf", "zoo_source", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    log = open(root / "server.log", "w")
    server_env = {**env, "MONAI_LABEL_TASKS_TRAIN": "false", "MONAI_LABEL_TASKS_SCORING": "false",
                  "MONAI_LABEL_TASKS_BATCH_INFER": "false", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                break
            try:
                if requests.get(f"{url}/info/", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert process.poll() is None, (root / "server.log").read_text()[-4000:]
        mask = np.asarray(Image.open(root / "data" / entry["label"])) > 0
        yield {"url": url, "process": process, "mask": mask, "root": root, "log": root / "server.log",
               "slice": int(entry["slice"]), "outside": outside}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _infer(server, model="thalamus", image="slice", params=None, output="image", files=None):
    return requests.post(f"{server['url']}/infer/{model}", params={"image": image, "output": output},
                         data={"params": json.dumps(params or {})}, files=files, timeout=120)


def _box_of(mask: np.ndarray, margin: int = 3) -> list[int]:
    rows, cols = np.nonzero(mask)
    # MONAI Label's 2-D convention: indices of the array as MONAI loads a PNG, i.e. [x (column), y (row)]
    return [int(cols.min()) - margin, int(rows.min()) - margin, int(cols.max()) + margin, int(rows.max()) + margin]


def test_info_lists_the_served_model_with_its_labels(server) -> None:
    info = requests.get(f"{server['url']}/info/", timeout=10).json()
    assert info["models"]["thalamus"]["labels"] == {"subcortical": 1}
    assert info["models"]["thalamus"]["type"] == "annotation"
    assert "mismatched" not in info["models"]  # a bundle that cannot load is not offered


def test_box_prompt_returns_a_png_mask_overlapping_the_structure(server) -> None:
    mask = server["mask"]
    reply = _infer(server, params={"roi": _box_of(mask)})
    assert reply.status_code == 200, reply.text
    values = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert set(np.unique(values).tolist()) == {0, 1}  # the label map's value, as /info/ lists it: 1, not 255
    predicted = values > 0
    assert predicted.shape == mask.shape
    chance = 2 * mask.mean() * predicted.mean() / (mask.mean() + predicted.mean())  # Dice of an independent mask
    dice = _dice(predicted, mask)
    assert dice > 0.6 and dice > 10 * chance, (dice, chance)
    server["box_dice"] = dice


def test_points_alone_and_json_output(server) -> None:
    rows, cols = np.nonzero(server["mask"])
    centre = [int(np.median(cols)), int(np.median(rows))]
    reply = _infer(server, params={"roi": _box_of(server["mask"]), "foreground": [centre], "background": [[2, 2]]},
                   output="json")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "thalamus" and body["label_names"] == {"subcortical": 1}
    assert abs(body["pixels"] - int(server["mask"].sum())) < server["mask"].sum()  # same order as the structure


def test_volume_roi_returns_a_nifti_on_the_volume_grid(server) -> None:
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    k = server["slice"]
    i, j = np.nonzero(labels[:, :, k])
    # 3D Slicer's MONAI Label plugin sends [i0, i1, j0, j1, k0, k1]; its RAS-to-IJK step can swap a pair (here j)
    roi = [int(i.min()) - 3, int(i.max()) + 3, int(j.max()) + 3, int(j.min()) - 3, k - 1, k + 1]
    reply = _infer(server, image="colin27", params={"roi": roi})
    assert reply.status_code == 200, reply.text
    out = server["root"] / "pred.nii.gz"
    out.write_bytes(reply.content)
    predicted = np.asarray(nib.load(out).dataobj)
    assert predicted.shape == labels.shape
    assert np.allclose(nib.load(out).affine, nib.load(COLIN27_DIR / "ch2.nii.gz").affine)
    assert predicted[:, :, : k - 1].sum() == 0 and predicted[:, :, k + 2:].sum() == 0  # only the roi's slices
    dice = _dice(predicted[:, :, k - 1:k + 2], labels[:, :, k - 1:k + 2])
    assert dice > 0.6, dice
    # the PNG path and the volume path see the same slice the same way
    assert dice == pytest.approx(_dice(predicted[:, :, k], labels[:, :, k]), abs=0.15)


def test_prompt_free_bundle_is_an_automatic_task(server) -> None:
    info = requests.get(f"{server['url']}/info/", timeout=10).json()
    assert info["models"]["automatic"]["type"] == "segmentation"
    reply = _infer(server, model="automatic")  # no prompt at all
    assert reply.status_code == 200, reply.text
    assert np.asarray(Image.open(io.BytesIO(reply.content))).shape == server["mask"].shape
    reply = _infer(server, model="automatic", image="colin27", params={"slice": server["slice"]})
    assert reply.status_code == 200, reply.text
    out = server["root"] / "auto.nii.gz"
    out.write_bytes(reply.content)
    predicted = np.asarray(nib.load(out).dataobj)
    others = np.delete(predicted, server["slice"], axis=2)
    assert others.sum() == 0  # only the requested slice is segmented


@pytest.mark.parametrize(
    ("model", "image", "params", "status", "message"),
    [
        ("nosuchmodel", "slice", {"roi": [10, 10, 50, 50]}, 404, "unknown model"),
        ("thalamus", "nosuchimage", {"roi": [10, 10, 50, 50]}, 404, "not in the datastore"),
        ("thalamus", "slice", {"roi": [500, 500, 900, 900]}, 422, "outside the image"),
        ("thalamus", "slice", {"roi": [40, 40, 40, 80]}, 422, "zero or negative area"),
        ("thalamus", "slice", {"foreground": [[10, 10, 3, 4]]}, 422, "foreground point must be a list of 2 or 3"),
        ("thalamus", "slice", {"thalamus": [[10, 10]]}, 422, "unknown point label"),
        ("thalamus", "slice", {}, 422, "needs a prompt"),
        ("thalamus", "corrupt", {"roi": [10, 10, 50, 50]}, 415, "cannot read the image"),
        ("mismatched", "slice", {"roi": [10, 10, 50, 50]}, 409, "does not fit this model"),
        ("corrupt", "slice", {"roi": [10, 10, 50, 50]}, 409, "is corrupt: its tensors do not match the checksum"),
        # a hostile or careless caller: only datastore ids and uploads are read, every mistake is a 4xx
        ("thalamus", "../../../../etc/passwd", {"roi": [10, 10, 50, 50]}, 404, "not in the datastore"),
        ("thalamus", "/etc/passwd", {"roi": [10, 10, 50, 50]}, 404, "not in the datastore"),
        ("thalamus", "slice", {"roi": [10, 10, 50, 50], "image": "/etc/passwd"}, 422, "may not set 'image'"),
        ("thalamus", "slice", {"roi": [10, 10, 50, 50], "model": "automatic"}, 422, "may not set 'model'"),
        ("thalamus", "slice", {"roi": [10, 10, 50, 50], "result_extension": "/../../tmp/x"}, 422,
         "result_extension must be one of"),
        ("thalamus", "slice", {"roi": [10, 10, 50, 50], "result_extension": ".nrrd"}, 422, "is for volumes"),
        ("thalamus", "colin27", {"roi": [80, 90, 110, 120, 70, 72], "result_extension": ".png"}, 422, "is for 2-D"),
        ("thalamus", "colin27", {"roi": [80, 90, 110, 120]}, 422, "cannot be told apart"),
        ("thalamus", "colin27", {"roi": [80, 80, 90, 120, 70, 72]}, 422, "has no extent in i"),
        ("thalamus", "colin27", {"roi": [80, 100, 90, 120, 500, 510]}, 422, "misses the volume"),
        ("thalamus", "colin27", {"roi": [80, 100, 90, 120, 70, 72], "slice": 90}, 422, "outside the roi's k range"),
        ("thalamus", "colin27", {"foreground": [[90, 100]]}, 422, "foreground point must be a list of 3"),
        ("thalamus", "colin27", {"slice": "seventy"}, 422, "slice must be an integer"),
        ("thalamus", "slice", {"roi": [10, "x", 50, 50]}, 422, "roi must be a list of 4 numbers"),
        ("thalamus", "slice", {"roi": [10, 10, 50, 50], "foreground": [[20, 20, 4]]}, 422, "image is 2-D"),
        ("thalamus", "slice", {"foreground": "centre"}, 422, "foreground must be a list of points"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(server, model, image, params, status, message) -> None:
    reply = _infer(server, model=model, image=image, params=params, output="json")
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]
    assert server["process"].poll() is None


def test_uploaded_unreadable_file_is_a_415(server) -> None:
    reply = _infer(server, image="", params={"roi": [10, 10, 50, 50]}, output="json",
                   files={"file": ("upload.png", b"garbage bytes", "image/png")})
    assert reply.status_code == 415, reply.text


def test_twenty_more_requests_in_a_row_after_the_bad_ones(server) -> None:
    mask = server["mask"]
    box = _box_of(mask)
    dices = []
    for n in range(20):
        shift = n % 3 - 1  # slightly different boxes: no caching of a single answer
        reply = _infer(server, params={"roi": [box[0] + shift, box[1], box[2] + shift, box[3]]})
        assert reply.status_code == 200, (n, reply.text)
        dices.append(_dice(np.asarray(Image.open(io.BytesIO(reply.content))) > 0, mask))
    assert min(dices) > 0.5, dices
    assert server["process"].poll() is None


@pytest.mark.parametrize(("params", "detail"), [
    ("{not json", "params is not valid JSON"),
    ("[1, 2]", "params must be a JSON object, got list"),
    ("\"roi\"", "params must be a JSON object, got str"),
])
def test_malformed_params_are_a_422_not_a_500(server, params, detail) -> None:
    reply = requests.post(f"{server['url']}/infer/thalamus", params={"image": "slice", "output": "json"},
                          data={"params": params}, timeout=60)
    assert reply.status_code == 422, reply.text
    assert detail in reply.json()["detail"]


def test_a_path_outside_the_datastore_is_never_read(server) -> None:
    """An absolute path to a readable image outside --studies answered 200 with a mask; an existing and a missing
    path now get the same 404, so the reply does not even tell which server files exist."""
    box = _box_of(server["mask"])
    existing = _infer(server, image=str(server["outside"]), params={"roi": box}, output="json")
    missing = _infer(server, image=str(server["outside"]) + ".gone", params={"roi": box}, output="json")
    assert existing.status_code == missing.status_code == 404
    assert existing.json()["detail"].replace(str(server["outside"]), "X") == missing.json()["detail"].replace(
        str(server["outside"]) + ".gone", "X")
    relative = _infer(server, image="../outside", params={"roi": box}, output="json")
    assert relative.status_code == 404 and "not in the datastore" in relative.json()["detail"]


def test_slicer_request_with_nrrd_result_and_the_viewed_slice(server) -> None:
    """What 3D Slicer's plugin sends for a 2-D model: a 6-number ROI, the viewed slice, its segment name as
    'label', result_extension '.nrrd'. The NRRD holds the mask (value 1) on the volume's grid, on that slice only."""
    from medsam_peft.transforms import LoadVolume

    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    k = server["slice"]
    i, j = np.nonzero(labels[:, :, k])
    roi = [int(i.min()) - 3, int(i.max()) + 3, int(j.min()) - 3, int(j.max()) + 3, k - 2, k + 2]
    params = {"roi": roi, "slice": k, "label": "thalamus", "foreground": [], "background": [],
              "result_extension": ".nrrd", "device": "cuda"}
    reply = _infer(server, image="colin27", params=params)
    assert reply.status_code == 200, reply.text
    out = server["root"] / "slicer.nrrd"
    out.write_bytes(reply.content)
    loaded = LoadVolume()(out)
    predicted = loaded[0].numpy()
    assert predicted.shape == labels.shape and set(np.unique(predicted).tolist()) == {0.0, 1.0}
    assert np.allclose(loaded.affine.numpy(), nib.load(COLIN27_DIR / "ch2.nii.gz").affine, atol=1e-4)
    assert np.delete(predicted, k, axis=2).sum() == 0  # only the viewed slice
    assert _dice(predicted[:, :, k], labels[:, :, k]) > 0.6


def test_upload_is_read_even_with_a_path_in_the_url(server) -> None:
    """An upload is the one way a file outside the datastore is read; a path in the URL beside it is ignored."""
    image = server["root"] / "outside.png"
    reply = _infer(server, image="/etc/passwd", params={"roi": _box_of(server["mask"])},
                   files={"file": ("upload.png", image.read_bytes(), "image/png")})
    assert reply.status_code == 200, reply.text
    assert _dice(np.asarray(Image.open(io.BytesIO(reply.content))) > 0, server["mask"]) > 0.6
