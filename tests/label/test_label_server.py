"""The MONAI Label app, served for real: `python -m monailabel.main start_server` on 127.0.0.1 with a bundle exported
from a tiny click-trained LiteMedSAM fine-tune on Colin27/AAL (the interactive demo bundle), prompted with boxes,
clicks and volumes over HTTP, with requests and with MONAI Label's own client."""

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
from medsam_peft.data.volumes import slice_to_image
from medsam_peft.tuners.adapter_io import read_adapter, tensor_checksum, write_adapter_payload
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
def server(tmp_path_factory, multiclass_run):
    root = tmp_path_factory.mktemp("label")
    # 1. a tiny real fine-tune: LiteMedSAM (real weights) + Conv-LoRA trained with simulated clicks, one epoch on
    # every 12th Colin27 slice. Every sample starts from a click (box_probability 0): in 13 steps the half that
    # starts from a box left one-click Dice at 0.06-0.07 on the fixture's validation slices, all clicks 0.48; the box
    # prompt stays LiteMedSAM's (box Dice 0.69)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
            str(REPO / "bundles/conv_lora_demo_interactive.json")]
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(root / "data"), "output_dir": str(root / "run"),
                 "slice_step": "12", "max_epochs": "1", "box_probability": "0.0", "overlays": "0",
                 "experiment_name": "label_test"}
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
    payload = read_adapter(broken / "models/model.safetensors")
    payload["state_dict"].pop(sorted(payload["state_dict"])[0])
    payload["metadata"]["tensor_sha256"] = tensor_checksum(payload["state_dict"])  # a whole file, of another model
    write_adapter_payload(payload, broken / "models/model.safetensors")
    # a copy damaged in transit: one value of one tensor changed, the recorded checksum kept
    corrupt = app / "model" / "corrupt"
    shutil.copytree(bundle, corrupt)
    payload = read_adapter(corrupt / "models/model.safetensors")
    first = sorted(payload["state_dict"])[0]
    payload["state_dict"][first].view(-1)[0] += 1.0
    write_adapter_payload(payload, corrupt / "models/model.safetensors")
    # the same adapter declared prompt-free (as a Conv-LoRA bundle trained without prompts is): the automatic task
    automatic = app / "model" / "automatic"
    shutil.copytree(bundle, automatic)
    config = json.loads((automatic / "configs/inference.json").read_text())
    (automatic / "configs/inference.json").write_text(json.dumps({**config, "prompt": "none"}))
    # a copy the train test fine-tunes, so that the other tests keep serving the fixture's adapter
    shutil.copytree(bundle, app / "model" / "trainable")
    # a multi-class model: the 12 subcortical structures as classes (tests/conftest.py::multiclass_run)
    assert cli_main(["export-bundle", str(multiclass_run[0] / "run"), str(app / "model" / "structures")]) == 0

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
               str(studies), "--conf", "models", "thalamus,mismatched,corrupt,automatic,trainable,structures", "--conf", "zoo_source", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    log = open(root / "server.log", "w")
    # scoring runs when asked only (by default MONAI Label scores every image after each train and next_sample)
    server_env = {**env, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "MONAI_LABEL_TASKS_BATCH_INFER": "false",
                  "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
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
               "slice": int(entry["slice"]), "outside": outside, "app": app, "datalist": datalist,
               "multiclass": multiclass_run[0]}
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


def test_multiclass_bundle_is_an_automatic_task_returning_a_class_id_map(server, tmp_path) -> None:
    """The label map the server returns for a slice is the exported bundle's own inference.json output, its class
    names are the datalist's, and the same slice of the volume gets the same map."""
    classes = json.loads((server["multiclass"] / "data" / "datalist.json").read_text())["meta"]["classes"]
    model = requests.get(f"{server['url']}/info/", timeout=10).json()["models"]["structures"]
    assert model["type"] == "segmentation" and model["labels"] == {n: i for i, n in enumerate(classes) if i}
    reply = _infer(server, model="structures")
    assert reply.status_code == 200, reply.text
    served = np.asarray(Image.open(io.BytesIO(reply.content)))
    assert served.shape == server["mask"].shape and set(np.unique(served)) <= set(range(len(classes)))
    bundle = server["app"] / "model" / "structures"
    requests_file = tmp_path / "requests.json"
    requests_file.write_text(json.dumps([{"image": str(server["root"] / "studies" / "slice.png")}]))
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs/inference.json"), "--bundle_root", str(bundle), "--datalist",
                           str(requests_file), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(served, np.asarray(Image.open(tmp_path / "out" / "slice_pred.png")))
    body = _infer(server, model="structures", output="json").json()
    assert body["label_names"] == model["labels"] and body["pixels"] == int((served > 0).sum())
    reply = _infer(server, model="structures", image="colin27", params={"slice": server["slice"]})
    assert reply.status_code == 200, reply.text
    out = tmp_path / "structures.nii.gz"
    out.write_bytes(reply.content)
    volume = np.asarray(nib.load(out).dataobj)
    assert np.delete(volume, server["slice"], axis=2).sum() == 0
    assert np.array_equal(slice_to_image(volume[:, :, server["slice"]]), served)
    reply = _infer(server, model="structures", params={"roi": [10, 10, 50, 50]})
    assert reply.status_code == 422 and "takes no prompt" in reply.json()["detail"]


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


# ---- through MONAI Label's own Python client: what annotators' tools send ------------------------------------------
def _client(server):
    from monailabel.client import MONAILabelClient

    # Its own folder: the client saves a result under the server's file name, which on one machine is the server's
    # own temporary file, deleted by the server right after the reply.
    folder = server["root"] / "client"
    folder.mkdir(exist_ok=True)
    return MONAILabelClient(server["url"], tmpdir=str(folder))


def test_second_prompt_on_an_image_skips_the_encoder(server, tmp_path) -> None:
    """SAM's design: the image embedding is computed once; later prompts on it run only the prompt encoder and the
    decoder. A fresh upload is encoded once, the next prompt on the same image is served from the cache."""
    client = _client(server)
    image = tmp_path / "fresh.png"
    plane = np.asarray(Image.open(server["root"] / "outside.png"))
    Image.fromarray(np.roll(plane, 3, axis=1)).save(image)  # content no earlier test has sent
    mask = np.roll(server["mask"], 3, axis=1)
    client.upload_image(str(image), "fresh")
    box = _box_of(mask)
    first_file, first = client.infer("thalamus", "fresh", {"roi": box})
    assert first["encoder_passes"] == 1 and first["decoder_passes"] == 1, first
    rows, cols = np.nonzero(mask)
    second_file, second = client.infer("thalamus", "fresh", {"roi": box, "foreground": [[int(np.median(cols)),
                                                                                          int(np.median(rows))]]})
    assert second["encoder_passes"] == 0 and second["decoder_passes"] == 1, second
    third_file, _ = client.infer("thalamus", "fresh", {"roi": box})
    first_mask, third_mask = (np.asarray(Image.open(f)) for f in (first_file, third_file))
    assert np.array_equal(first_mask, third_mask)  # the cached embedding gives the same answer
    assert _dice(first_mask > 0, mask) > 0.6


def test_clicks_alone_segment_the_structure(server) -> None:
    """One foreground click at the structure's centre: a click-trained model answers with a mask on the structure,
    not the empty mask the box-trained demo returned (Dice 0.0, issue #15). The fixture's model is a one-epoch
    fine-tune on 13 slices, so the bar is low; the full interactive demo reaches Dice 0.65 after one click on average
    over the held-out slices (README)."""
    mask = server["mask"]
    rows, cols = np.nonzero(mask)
    centre = [int(np.median(cols)), int(np.median(rows))]
    one_file, one = _client(server).infer("thalamus", "slice", {"foreground": [centre]})
    one_click = np.asarray(Image.open(one_file)) > 0
    chance = 2 * mask.mean() * one_click.mean() / (mask.mean() + one_click.mean())
    assert one["pixels"] > 0 and _dice(one_click, mask) > max(0.25, 10 * chance), (_dice(one_click, mask), chance)
    # a background click far outside the structure ("not here") corrects nothing: still a mask on the structure, at
    # least as good as the click alone (as a point token it tripled the mask: Dice 0.16-0.18, settled_negative)
    two_file, two = _client(server).infer("thalamus", "slice", {"foreground": [centre], "background": [[5, 5]]})
    two_dice = _dice(np.asarray(Image.open(two_file)) > 0, mask)
    assert two_dice > max(0.25, _dice(one_click, mask) - 0.05) and two["decoder_passes"] == 1, (two_dice, two)
    server["click_dice"] = _dice(one_click, mask)


def test_label_named_points_are_foreground_clicks(server) -> None:
    """3D Slicer's DeepEdit-style requests name the point list after the segment: {'subcortical': [...]}."""
    rows, cols = np.nonzero(server["mask"])
    centre = [int(np.median(cols)), int(np.median(rows))]
    box = _box_of(server["mask"])
    _, named = _client(server).infer("thalamus", "slice", {"roi": box, "subcortical": [centre], "background": [],
                                                            "label": "subcortical"})
    _, plain = _client(server).infer("thalamus", "slice", {"roi": box, "foreground": [centre]})
    assert named["pixels"] == plain["pixels"] > 0


def _propagated(server, params):
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    result, body = _client(server).infer("thalamus", "colin27", {**params, "result_extension": ".nii.gz"})
    predicted = np.asarray(nib.load(result).dataobj) > 0
    present = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
    return labels, predicted, present, body


def _thalamus_roi(server, k0=None, k1=None):
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    k = server["slice"]
    i, j = np.nonzero(labels[:, :, k])
    return [int(i.min()) - 3, int(i.max()) + 3, int(j.min()) - 3, int(j.max()) + 3, k if k0 is None else k0,
            k if k1 is None else k1]


def test_a_box_on_one_slice_propagates_through_the_volume(server) -> None:
    """An annotator boxes the right thalamus on one axial slice; neighbouring slices are prompted from the previous
    slice's mask, both ways, until the mask stops continuing the object. Scored per slice against the AAL labels."""
    k = server["slice"]
    labels, predicted, present, body = _propagated(server, {"roi": _thalamus_roi(server)})
    slices = body["slices"]
    assert min(slices) < k < max(slices) and body["propagated"] == [z for z in slices if z != k]
    assert set(np.nonzero(predicted.any(axis=(0, 1)))[0].tolist()) == set(slices)
    assert min(slices) <= present[0] + 2 and max(slices) >= present[-1] - 2, (slices, present)  # reaches both ends
    inside = [_dice(predicted[:, :, z], labels[:, :, z]) for z in present]
    assert np.median(inside) > 0.6, inside
    # no repeated work: one encoder and one decoder pass per slice tried (each direction tries one slice past the end)
    assert body["decoder_passes"] <= len(slices) + 2 and body["encoder_passes"] <= body["decoder_passes"], body
    server["propagation_flat"] = {"slices": [min(slices), max(slices)], "present": [present[0], present[-1]],
                                  "dice_3d": _dice(predicted, labels), "median_slice_dice": float(np.median(inside))}


def test_a_roi_over_the_structure_propagates_from_the_viewed_slice_within_its_range(server) -> None:
    """3D Slicer's ROI spans slices: with propagate true the box prompts the viewed slice only, the other slices of
    the ROI's k range get the box of their neighbour's mask. The result stays inside the range."""
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    present = [z for z in range(labels.shape[2]) if labels[:, :, z].any()]
    roi = _thalamus_roi(server, present[0] - 2, present[-1] + 2)
    labels, predicted, present, body = _propagated(server, {"roi": roi, "slice": server["slice"], "propagate": True})
    assert min(body["slices"]) >= roi[4] and max(body["slices"]) <= roi[5]
    assert predicted[:, :, : roi[4]].sum() == 0 and predicted[:, :, roi[5] + 1:].sum() == 0
    dice = _dice(predicted, labels)
    assert dice > 0.55, dice
    assert body["decoder_passes"] <= roi[5] - roi[4] + 1, body
    server["propagation_roi"] = {"dice_3d": dice, "slices": len(body["slices"])}


def test_propagation_can_be_turned_off_and_bad_settings_are_422(server) -> None:
    k = server["slice"]
    roi = _thalamus_roi(server)
    _, body = _client(server).infer("thalamus", "colin27", {"roi": roi, "propagate": False})
    assert body["slices"] == [k] and body["propagated"] == []
    for params, message in (({"roi": roi, "propagate": "yes"}, "propagate must be true or false"),
                            ({"roi": roi, "propagation_prompt": "mask"}, "propagation_prompt must be one of")):
        reply = _infer(server, image="colin27", params=params, output="json")
        assert reply.status_code == 422 and message in reply.json()["detail"], reply.text


def test_clicks_on_two_slices_segment_both(server) -> None:
    """3-D clicks [i, j, k] on any slices: each clicked slice is segmented from its own clicks."""
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj) == RIGHT_THALAMUS
    present = [z for z in range(labels.shape[2]) if labels[:, :, z].sum() >= 50]
    low, high = present[len(present) // 3], present[2 * len(present) // 3]
    clicks = []
    for z in (low, high):
        i, j = np.nonzero(labels[:, :, z])
        centre = int(np.argmin((i - i.mean()) ** 2 + (j - j.mean()) ** 2))
        clicks.append([int(i[centre]), int(j[centre]), z])
    result, body = _client(server).infer("thalamus", "colin27", {"foreground": clicks, "propagate": False,
                                                                 "result_extension": ".nii.gz"})
    predicted = np.asarray(nib.load(result).dataobj) > 0
    assert body["slices"] == [low, high] and body["propagated"] == []
    assert sorted(np.nonzero(predicted.any(axis=(0, 1)))[0].tolist()) == [low, high]
    for z in (low, high):  # the fixture is a one-epoch model: one click overlaps the structure, far above chance
        plane, truth = predicted[:, :, z], labels[:, :, z]
        chance = 2 * plane.mean() * truth.mean() / (plane.mean() + truth.mean())
        assert _dice(plane, truth) > max(0.15, 10 * chance), (z, _dice(plane, truth), chance)


# ---- training from the datastore, scoring and active learning (MONAI Label's train/scoring/activelearning) -------
MIN_PIXELS = 20  # the train task's default: smaller objects are not used


def _label_maps(server, count=4):
    """Annotators' final labels: ``count`` training slices, every structure on a slice as its own label value."""
    data = server["root"] / "data"
    by_image: dict[str, list[dict]] = {}
    for entry in server["datalist"]["training"]:
        by_image.setdefault(entry["image"], []).append(entry)
    chosen = sorted(by_image, key=lambda name: -len(by_image[name]))[:count]
    maps = {}
    for index, name in enumerate(chosen):
        labels = np.zeros(np.asarray(Image.open(data / name)).shape[:2], dtype=np.uint8)
        for value, entry in enumerate(by_image[name], start=1):
            labels[np.asarray(Image.open(data / entry["label"])) > 0] = value
        maps[f"train{index}"] = (data / name, labels)
    return maps


def _wait_for_training(client, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR"):
            return status
        time.sleep(2)
    raise AssertionError(f"training still running after {timeout} s: {status}")


def test_train_fine_tunes_the_adapter_from_the_datastore_then_serves_it(server, tmp_path) -> None:
    """Annotators label slices, press Train: the adapter is fine-tuned on the datastore's final labels in MONAI
    Label's background train process, replaces the bundle's adapter if it validates better, and the next click is
    answered by the new adapter."""
    from monailabel.client.client import MONAILabelClientException

    client = _client(server)
    maps = _label_maps(server)
    for image_id, (image, labels) in maps.items():
        client.upload_image(str(image), image_id)
        label_file = tmp_path / f"{image_id}_label.png"
        Image.fromarray(labels).save(label_file)
        client.save_label(image_id, str(label_file), tag="final")
    expected = {image_id: sum(int((labels == v).sum()) >= MIN_PIXELS for v in np.unique(labels) if v)
                for image_id, (_, labels) in maps.items()}
    # the caller's mistakes are answered at once, before anything is queued
    for model, params, status, message in (("nosuch", {}, 404, "no train task for model"),
                                           ("trainable", {"max_epochs": "many"}, 422, "max_epochs must be"),
                                           ("trainable", {"val_split": 0}, 422, "val_split must be between"),
                                           ("trainable", {"publish": "never"}, 422, "publish must be one of")):
        reply = requests.post(f"{server['url']}/train/{model}", json=params, timeout=30)
        assert reply.status_code == status and message in reply.json()["detail"], reply.text
    bundle = server["app"] / "model" / "trainable"
    served = (bundle / "models/model.safetensors").read_bytes()
    box = _box_of(server["mask"])
    before_file, _ = client.infer("trainable", "slice", {"roi": box})
    before_mask = np.asarray(Image.open(before_file))

    # "publish": "always" takes the last epoch's adapter; by default it must validate better than the served one
    client.train_start("trainable", {"max_epochs": 1, "val_split": 0.25, "publish": "always"})
    status = _wait_for_training(client)
    log = (server["app"] / "train" / "trainable").glob("*/train.log")
    assert status["status"] == "DONE", (status, [p.read_text()[-3000:] for p in log])
    run = json.loads((server["app"] / "train" / "trainable" / "last_run.json").read_text())
    # whole images go to validation: one of the four labelled images, its every object
    assert run["images"] == len(maps) and run["train_samples"] + run["val_samples"] == sum(expected.values()), run
    assert run["val_samples"] == expected[sorted(expected)[-1]], (run, expected)
    info = requests.get(f"{server['url']}/info/", timeout=10).json()
    assert info["trainers"]["trainable"]["config"]["max_epochs"] == 1  # MONAI Label's train panel
    assert info["train_stats"]["trainable"]["run"] == run["run"]
    run_dir = server["app"] / "train" / "trainable" / run["run"]
    now = (bundle / "models/model.safetensors").read_bytes()
    final = read_adapter(run_dir / "adapter_final.safetensors")["metadata"]["tensor_sha256"]
    assert run["replaced"] and read_adapter(bundle / "models/model.safetensors")["metadata"]["tensor_sha256"] == final
    assert now != served and run["adapter"] == str(bundle / "models/model.safetensors")
    plain = torch.load(bundle / "models/model.pt", weights_only=True)  # the ckpt_export twin follows
    assert tensor_checksum({k.removeprefix("model."): v for k, v in plain.items()}) == final
    history = list((bundle / "models/history").glob("model_*.safetensors"))
    assert [p.read_bytes() == served for p in history] == [True]
    assert json.loads((bundle / "configs/metadata.json").read_text())["version"] == "0.1.1"
    # the served adapter's score on the validation image before the first epoch, and the epoch's
    assert set(run["metrics"]) >= {"val_dice_click3", "val_box_dice", "val_dice_click1", "val_noc85"}, run
    # the next request is answered by the new adapter: the image is encoded again, the mask changes
    after_file, after = client.infer("trainable", "slice", {"roi": box})
    assert after["encoder_passes"] == 1, after
    assert not np.array_equal(np.asarray(Image.open(after_file)), before_mask)
    server["train_run"] = {k: run[k] for k in ("train_samples", "val_samples", "seconds", "replaced", "metrics")}
    with pytest.raises(MONAILabelClientException, match="422"):
        client.train_start("thalamus", {"learning_rate": -1})


def test_dice_scoring_equals_a_numpy_recomputation_from_served_masks(server) -> None:
    """``dice`` scores the served model on each labelled image, prompted with each object's box (3 px margin):
    recomputed here from masks the infer endpoint returns for the same boxes."""
    reply = requests.post(f"{server['url']}/scoring/dice_thalamus", params={"run_sync": "true"}, timeout=600)
    assert reply.status_code == 200, reply.text
    scores = reply.json()
    maps = _label_maps(server)
    assert sorted(scores) == sorted(maps)
    for image_id in sorted(maps)[:2]:
        labels = maps[image_id][1]
        dices = []
        for value in (v for v in np.unique(labels) if v):
            target = labels == value
            if target.sum() < MIN_PIXELS:
                continue
            answer = _infer(server, image=image_id, params={"roi": _box_of(target)})
            assert answer.status_code == 200, answer.text
            dices.append(_dice(np.asarray(Image.open(io.BytesIO(answer.content))) > 0, target))
        assert abs(scores[image_id] - float(np.mean(dices))) < 1e-9, (image_id, scores[image_id], dices)
    bad = requests.post(f"{server['url']}/scoring/nosuch", params={"run_sync": "true"}, timeout=30)
    assert bad.status_code == 404, bad.text
    bad = requests.post(f"{server['url']}/scoring/dice", params={"run_sync": "true"}, json={"max_planes": 0},
                        timeout=30)
    assert bad.status_code == 422 and "max_planes" in bad.json()["detail"], bad.text


def test_strategies_offer_unlabelled_images_and_epistemic_ranks_them(server) -> None:
    client = _client(server)
    labelled = set(_label_maps(server))
    unlabelled = {d for d in client.datastore()["objects"]} - labelled
    assert client.next_sample("random", {})["id"] in unlabelled
    assert client.next_sample("first", {})["id"] == sorted(unlabelled)[0]
    reply = requests.post(f"{server['url']}/scoring/epistemic", params={"run_sync": "true"},
                          json={"max_planes": 1}, timeout=600)
    assert reply.status_code == 200, reply.text
    scores = reply.json()
    assert "corrupt" not in scores and set(scores) == unlabelled - {"corrupt"}, scores
    assert all(0 < s < np.log(2) for s in scores.values()), scores
    assert client.next_sample("epistemic", {})["id"] == max(scores, key=scores.get)
    bad = requests.post(f"{server['url']}/activelearning/nosuch", timeout=30)
    assert bad.status_code == 404, bad.text
