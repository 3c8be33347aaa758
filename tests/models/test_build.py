"""Backbones: official-layout checkpoints, input-size interpolation, clear errors, downloads, real LiteMedSAM."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from medsam_peft.models import BACKBONES, CheckpointError, build_sam, resolve_checkpoint
from medsam_peft.models.registry import CheckpointSource
from medsam_peft.utils.download import DownloadError, download_file
from tests.http_server import RangeHandler


@pytest.fixture(scope="module")
def vit_b_official_checkpoint(tmp_path_factory):
    """Random tensors in the exact key layout of sam_vit_b_01ec64.pth (1024x1024 pretraining size)."""
    torch.manual_seed(0)
    state = build_sam("vit_b").state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn_like(value) * 0.02
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return path, state


def test_official_layout_loads_strictly(vit_b_official_checkpoint) -> None:
    path, state = vit_b_official_checkpoint
    model = build_sam("vit_b", path)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert len(state) == sum(1 for _ in model.state_dict())
    assert all(torch.equal(loaded[k], state[k]) for k in ("image_encoder.blocks.11.attn.rel_pos_h",
                                                          "mask_decoder.iou_prediction_head.layers.2.weight",
                                                          "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"))


def test_1024_checkpoint_is_interpolated_to_256(vit_b_official_checkpoint) -> None:
    path, state = vit_b_official_checkpoint
    model = build_sam("vit_b", path, image_size=256)
    loaded = model.state_dict()
    pos = state["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    expected_pos = F.interpolate(pos, size=(16, 16), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(loaded["image_encoder.pos_embed"], expected_pos)
    glob = state["image_encoder.blocks.2.attn.rel_pos_h"]  # global block: 127 -> 31 rows
    expected_rel = F.interpolate(glob.t()[None], size=31, mode="linear", align_corners=False)[0].t()
    assert torch.allclose(loaded["image_encoder.blocks.2.attn.rel_pos_h"], expected_rel)
    # windowed blocks keep their 14x14 tables unchanged; decoder weights are untouched
    assert torch.equal(loaded["image_encoder.blocks.0.attn.rel_pos_w"], state["image_encoder.blocks.0.attn.rel_pos_w"])
    assert torch.equal(loaded["mask_decoder.mask_tokens.weight"], state["mask_decoder.mask_tokens.weight"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 256, 256), boxes=torch.tensor([[20.0, 30.0, 200.0, 220.0]]))
    assert out.shape == (1, 1, 256, 256) and torch.isfinite(out).all()


def test_medsam_style_wrapped_checkpoint_loads(tmp_path) -> None:
    torch.manual_seed(0)
    state = build_sam("vit_tiny").state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "medsam_like.pth")
    loaded = build_sam("vit_tiny", tmp_path / "medsam_like.pth").state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_corrupt_and_mismatched_checkpoints_name_file_and_keys(tmp_path, vit_b_official_checkpoint) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_sam("vit_tiny", tmp_path / "nowhere.pth")
    path, _ = vit_b_official_checkpoint
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match="truncated.pth.*download it again"):
        build_sam("vit_b", truncated)
    state = build_sam("vit_tiny").state_dict()
    state["image_encoder.blocks.0.attn.qkv.weght"] = state.pop("image_encoder.blocks.0.attn.qkv.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"renamed.pth.*1 missing: image_encoder.blocks.0.attn.qkv.weight;"
                                              r" 1 unexpected: image_encoder.blocks.0.attn.qkv.weght"):
        build_sam("vit_tiny", tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64.pth does not match the vit_tiny.*shape mismatch"):
        build_sam("vit_tiny", path)


def test_wrong_backbone_for_the_real_lite_medsam_file() -> None:
    with pytest.raises(CheckpointError, match=r"lite_medsam.pth does not match the vit_b.*missing: image_encoder"):
        build_sam("vit_b", resolve_checkpoint("lite_medsam", "bundled"))


def test_bad_backbone_and_size() -> None:
    with pytest.raises(KeyError, match="unknown backbone 'vit_x'"):
        build_sam("vit_x")
    with pytest.raises(ValueError, match="only runs at image_size=256"):
        build_sam("lite_medsam", image_size=512)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_sam("vit_tiny", image_size=100)


def test_real_lite_medsam_segments_a_real_structure(lite_medsam_state, colin27_slice) -> None:
    """Zero-shot LiteMedSAM with a tight box on the left thalamus of Colin27: a trained model, not random weights."""
    model = build_sam("lite_medsam")
    model.load_state_dict(lite_medsam_state)
    with torch.no_grad():
        logits = model.eval()(colin27_slice["image"][None], boxes=colin27_slice["box"][None])
    pred, mask = (logits[0, 0] > 0).float(), colin27_slice["mask"]
    dice = float(2 * (pred * mask).sum() / (pred.sum() + mask.sum()))
    assert dice > 0.6


def test_release_name_downloads_and_verifies(local_server, tmp_path, monkeypatch) -> None:
    root, url = local_server
    torch.save(build_sam("vit_tiny").state_dict(), root / "tiny.pth")
    digest = hashlib.sha256((root / "tiny.pth").read_bytes()).hexdigest()
    spec = BACKBONES["vit_tiny"]
    monkeypatch.setitem(BACKBONES, "vit_tiny", type(spec)(**{**spec.__dict__, "checkpoints": {
        "sam": CheckpointSource(url + "/tiny.pth", "tiny.pth", sha256=digest)}}))
    path = resolve_checkpoint("vit_tiny", "sam", cache_dir=str(tmp_path / "cache"))
    assert path == tmp_path / "cache" / "tiny.pth" and path.read_bytes() == (root / "tiny.pth").read_bytes()
    build_sam("vit_tiny", "sam", cache_dir=str(tmp_path / "cache"))  # second call reuses the verified file


def test_download_resumes_and_rejects_bad_checksums(local_server, tmp_path) -> None:
    root, url = local_server
    payload = bytes(range(256)) * 4000
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(payload[:12345])  # an interrupted earlier download
    RangeHandler.ranges.clear()
    download_file(url + "/blob.bin", dest, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    assert dest.read_bytes() == payload
    assert RangeHandler.ranges == ["bytes=12345-"]  # continued, not restarted
    with pytest.raises(DownloadError, match="other.bin, but .*sha256 .* does not match"):
        download_file(url + "/blob.bin", tmp_path / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()
    with pytest.raises(DownloadError, match="could not download"):
        download_file(url + "/absent.bin", tmp_path / "absent.bin")
