"""Invariants every tuner must satisfy. Adding a tuner = adding rows to TUNER_CASES."""

from __future__ import annotations

import copy
import json
import re
import warnings

import pytest
import torch

from medsam_peft.engines.distributed import needs_unused_parameter_search
from medsam_peft.errors import ConfigError
from medsam_peft.models import PromptableSam, build_sam
from medsam_peft.tuners import (
    AdapterLoadError,
    BaseTunerLayer,
    build_tuned_sam,
    get_tuned_model,
    list_tuners,
    load_adapter,
    load_tuned_sam,
    make_tuner_config,
    read_adapter,
    save_adapter,
)
from medsam_peft.tuners.adapter_io import adapter_state_dict, tensor_checksum

QKV_TINY = {"image_encoder.blocks.0.attn.qkv", "image_encoder.blocks.1.attn.qkv"}
LINEARS_TINY = {
    f"image_encoder.blocks.{i}.{m}" for i in (0, 1) for m in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")
}
NECK = {"image_encoder.neck.0", "image_encoder.neck.2"}
BLOCKS_TINY = {"image_encoder.blocks.0", "image_encoder.blocks.1"}
SUBLAYERS_TINY = {f"image_encoder.blocks.{i}.{m}" for i in (0, 1) for m in ("attn", "mlp")}
SSF_TINY = LINEARS_TINY | {f"image_encoder.blocks.{i}.norm{j}" for i in (0, 1) for j in (1, 2)} | {
    "image_encoder.patch_embed.proj", "image_encoder.neck.1", "image_encoder.neck.3"}

# (case id, tuner name, options, module names it must adapt on vit_tiny, regex of base parameters that also train
# beyond the mask decoder and the adapter's own parameters)
TUNER_CASES = [
    ("lora-r4", "lora", {"r": 4, "alpha": 8}, QKV_TINY, None),
    ("lora-r2-block1", "lora", {"r": 2, "target_modules": r"image_encoder\.blocks\.1\.attn\.qkv"},
     {"image_encoder.blocks.1.attn.qkv"}, None),
    ("conv_lora-r3-e8", "conv_lora", {}, QKV_TINY, None),
    ("conv_lora-r2-e3", "conv_lora", {"r": 2, "num_experts": 3}, QKV_TINY, None),
    ("sam_parser-neck", "sam_parser", {}, NECK, None),
    ("sam_parser-linear-shift", "sam_parser", {"decompose_linear": True, "spectral_shift": True}, NECK | LINEARS_TINY,
     None),
    ("decoder_only", "decoder_only", {}, set(), None),
    ("full", "full", {}, set(), r"(image_encoder|prompt_encoder)\..*"),
    ("bitfit", "bitfit", {}, set(), r"image_encoder\..*\.bias"),
    ("adapter-b4-relu", "adapter", {"bottleneck": 4, "activation": "relu"}, SUBLAYERS_TINY, None),
    ("vpt-5", "vpt", {"num_tokens": 5}, {f"image_encoder.blocks.{i}.attn" for i in (0, 1)}, None),
    ("ssf", "ssf", {}, SSF_TINY, None),
    ("lst-d8", "lst", {"side_dim": 8, "side_heads": 2}, BLOCKS_TINY | {"image_encoder.neck"}, None),
    ("sam_adapter-s4", "sam_adapter", {"scale_factor": 4}, BLOCKS_TINY | {"image_encoder.patch_embed"}, None),
    ("fact-r4", "fact", {"r": 4, "scale": 2.0}, {f"image_encoder.blocks.{i}.attn.{m}" for i in (0, 1)
                                                  for m in ("qkv", "proj")}, None),
    ("sam_parser_lora", "sam_parser_lora", {"r": 2}, NECK | QKV_TINY, None),
]
CASE_IDS = [case[0] for case in TUNER_CASES]
# With box prompts the prompt encoder's point, padding and mask-input weights play no part (they train under "full").
UNUSED_WITH_BOXES = ("prompt_encoder.point_embeddings.0", "prompt_encoder.point_embeddings.1",
                     "prompt_encoder.not_a_point_embed", "prompt_encoder.mask_downscaling")


def test_every_registered_tuner_has_a_case() -> None:
    assert {case[1] for case in TUNER_CASES} == set(list_tuners())


def _base(seed: int = 1, tuner: str | None = None) -> PromptableSam:
    """vit_tiny with the decoder the tuner's paper pairs it with (SAM's own with ``tuner=None``)."""
    torch.manual_seed(seed)
    tokens = None if tuner is None else make_tuner_config(tuner).reference_mask_tokens
    return build_sam("vit_tiny", mask_tokens=tokens)


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "image": torch.rand(batch, 3, 128, 128, generator=g),
        "boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [30.0, 5.0, 120.0, 60.0]])[:batch],
    }


def _tuned(tuner: str, options: dict, init_weights: bool = True, seed: int = 1):
    return get_tuned_model(_base(seed, tuner), tuner, **{**options, "init_weights": init_weights})


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) < tol)


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_targets_and_trainable_set(case_id, tuner, options, targets, also_trains) -> None:
    model = _tuned(tuner, options)
    assert set(model.targeted_module_names) == targets
    config = model.config
    base_names = {n for n, _ in _base().named_parameters()}
    for name, param in model.model.named_parameters():
        adapter = model.is_adapter_parameter(name)
        assert adapter != (name.replace(".base_layer", "") in base_names), f"{name}: adapter parameters are exactly the ones SAM does not have"
        in_decoder = name.startswith("mask_decoder.")
        frozen_head = any(name.startswith(f + ".") for f in config.frozen_modules)
        extra = also_trains is not None and re.fullmatch(also_trains, name) is not None
        assert param.requires_grad == (adapter or extra or (in_decoder and not frozen_head)), name
    if targets:
        assert any(model.is_adapter_parameter(n) for n, _ in model.model.named_parameters())
    assert model.parameter_report()["tuner"] == tuner


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_identity_at_initialisation(case_id, tuner, options, targets, also_trains) -> None:
    base = _base(tuner=tuner)
    config = make_tuner_config(tuner, **options)
    tuned = get_tuned_model(copy.deepcopy(base), config)
    x = _inputs()
    with torch.no_grad():
        expected = base.eval()(x["image"], boxes=x["boxes"])
        if not tuned.identity_at_init:  # documented exception (VPT): the prompts act from the first step
            assert not _close(tuned.eval()(x["image"], boxes=x["boxes"]), expected, 1e-3)
            return
        for mode in (False, True):  # train mode too: Conv-LoRA's gate noise must not leak in while B = 0
            got = tuned.train(mode)(x["image"], boxes=x["boxes"])
            assert _close(got, expected), (case_id, mode)
        assert _close(tuned.eval()(x["image"]), base(x["image"]))  # prompt-free mode


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_gradients_reach_exactly_the_trainable_set(case_id, tuner, options, targets, also_trains) -> None:
    model = _tuned(tuner, options, init_weights=False).train()
    x = _inputs()
    loss = model(x["image"], boxes=x["boxes"]).square().mean() + model.aux_loss()
    loss.backward()
    unrouted = set()
    for name, layer in model.tuner_layers():
        routed = getattr(layer, "last_expert_index", None)
        if routed is not None:  # Conv-LoRA: an expert that received no window in this step gets no gradient
            used = set(routed.tolist())
            unrouted |= {f"{name}.conv_lora_experts.{e}" for e in range(len(layer.conv_lora_experts)) if e not in used}
    # With one output mask, hypernetwork MLPs 1..3 and the IoU head cannot affect the loss. SAM-PARSER keeps them
    # trainable, as the paper's 3963.2K decoder count does; they must then get an exactly-zero gradient.
    unused = {f"mask_decoder.output_hypernetworks_mlps.{k}" for k in range(1, model.model.num_mask_tokens)}
    unused.add("mask_decoder.iou_prediction_head")
    unused.update(UNUSED_WITH_BOXES)
    for name, param in model.model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, f"frozen {name} received a gradient"
        elif any(name.startswith(prefix + ".") for prefix in unrouted):
            assert param.grad is None, name
        elif any(name.startswith(prefix + ".") for prefix in unused):
            assert param.grad is None or param.grad.abs().sum() == 0, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"trainable {name} got no gradient"
    # DDP must search for unused parameters exactly where a step can leave one without a gradient (this one did)
    gradless = [n for n, p in model.model.named_parameters() if p.requires_grad and p.grad is None]
    assert needs_unused_parameter_search(model) or not gradless, gradless[:3]
    assert needs_unused_parameter_search(model) == (tuner in ("conv_lora", "sam_parser", "sam_parser_lora", "fact",
                                                              "full"))


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_adapter_save_load_round_trip(case_id, tuner, options, targets, also_trains, tmp_path) -> None:
    trained = _tuned(tuner, options, init_weights=False).eval()
    path = save_adapter(trained, tmp_path / "adapter.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # the safetensors container: header length, then the JSON header
    payload = read_adapter(path)
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    assert set(payload["state_dict"]) == trainable  # no frozen SAM weight in the file
    assert payload["metadata"]["tuner"] == tuner and payload["metadata"]["backbone"] == "vit_tiny"
    for name, param in trained.model.named_parameters():  # bit-identical, dtype included
        if param.requires_grad:
            assert payload["state_dict"][name].dtype == param.dtype and torch.equal(payload["state_dict"][name], param)
    # the torch.save container (files from before safetensors) holds the same payload
    assert read_adapter(save_adapter(trained, tmp_path / "adapter.pt"))["metadata"] == payload["metadata"]

    fresh = _tuned(tuner, options, init_weights=True).eval()
    load_adapter(fresh, path)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x["image"], boxes=x["boxes"]), trained(x["image"], boxes=x["boxes"]))


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_merge_equals_unmerged(case_id, tuner, options, targets, also_trains) -> None:
    model = _tuned(tuner, options, init_weights=False).eval()
    x = _inputs()
    layers = [layer for _, layer in model.tuner_layers()]
    with torch.no_grad():
        expected = model(x["image"], boxes=x["boxes"])
        if not all(layer.supports_merge for layer in layers):
            with pytest.raises(NotImplementedError, match="cannot be merged"):
                model.merge_adapter()
            return
        model.merge_adapter()
        assert _close(model(x["image"], boxes=x["boxes"]), expected, 1e-4)
        model.unmerge_adapter()
        assert _close(model(x["image"], boxes=x["boxes"]), expected, 1e-5)
        plain = model.merge_and_unload()
        assert isinstance(plain, PromptableSam)
        assert not any(isinstance(m, BaseTunerLayer) for m in plain.modules())
        assert _close(plain(x["image"], boxes=x["boxes"]), expected, 1e-4)


@pytest.mark.parametrize("case_id, tuner, options, targets, also_trains", TUNER_CASES, ids=CASE_IDS)
def test_identity_on_real_lite_medsam(case_id, tuner, options, targets, also_trains, lite_medsam_state, colin27_slice) -> None:
    """Real LiteMedSAM weights, real MR slice: the tuned model starts exactly where the pretrained one is."""
    base = build_sam("lite_medsam")
    base.load_state_dict(lite_medsam_state)
    config = make_tuner_config(tuner, **{k: v for k, v in options.items() if k != "target_modules"})
    if config.requires_vit_encoder:  # VPT, LST, SAM-Adapter, FacT: refused with a message naming the backbone
        with pytest.raises(ValueError, match=f"{tuner}' needs a SAM ViT image encoder.*'lite_medsam' has a TinyViT"):
            get_tuned_model(base, config)
        return
    base.set_decoder_shape(config.reference_mask_tokens)
    tuned = get_tuned_model(copy.deepcopy(base), config).eval()
    image, box = colin27_slice["image"][None], colin27_slice["box"][None]
    with torch.no_grad():
        assert _close(tuned(image, boxes=box), base.eval()(image, boxes=box))
    if config.effective_target_modules is not None:
        assert tuned.targeted_module_names  # TinyViT blocks / neck found by the same default patterns


def test_adapter_load_rejects_mismatches(tmp_path) -> None:
    lora = _tuned("lora", {"r": 4}, init_weights=False)
    path = save_adapter(lora, tmp_path / "lora.pt")
    with pytest.raises(AdapterLoadError, match=r"lora.pt.*tuner 'lora' in the file vs 'conv_lora'"):
        load_adapter(_tuned("conv_lora", {"r": 4}), path)
    with pytest.raises(AdapterLoadError, match=r"options differ: r=4 \(model: 8\)"):
        load_adapter(_tuned("lora", {"r": 8}), path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(AdapterLoadError, match="truncated.pt.*truncated or corrupt"):
        load_adapter(_tuned("lora", {"r": 4}), truncated)
    full = tmp_path / "full_sam.pt"
    torch.save(_base().state_dict(), full)
    with pytest.raises(AdapterLoadError, match="not a medsam_peft adapter file"):
        load_adapter(_tuned("lora", {"r": 4}), full)


def test_safetensors_adapter_is_checked_and_readable_without_medsam_peft(tmp_path) -> None:
    from safetensors import safe_open

    trained = _tuned("conv_lora", {}, init_weights=False)
    path = save_adapter(trained, tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as handle:  # any safetensors reader sees tensors + JSON metadata
        header = handle.metadata()
        assert header["format"] == "medsam_peft.adapter/1" and json.loads(header["metadata"])["tuner"] == "conv_lora"
        assert set(handle.keys()) == {n for n, p in trained.model.named_parameters() if p.requires_grad}
    meta = read_adapter(path)["metadata"]
    frozen = {n: p for n, p in trained.model.named_parameters() if not p.requires_grad}
    assert meta["base_sha256"] == tensor_checksum(frozen) and len(meta["tensor_sha256"]) == 64
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of the last tensor
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(AdapterLoadError, match=r"flipped.safetensors is corrupt: its tensors do not match the checksum"):
        load_tuned_sam(flipped)
    header_flip = bytearray(path.read_bytes())
    header_flip[20] ^= 0x40
    damaged = tmp_path / "header.safetensors"
    damaged.write_bytes(bytes(header_flip))
    with pytest.raises(AdapterLoadError, match="header.safetensors"):
        read_adapter(damaged)
    with pytest.warns(UserWarning, match="adapter.safetensors was trained on other base weights"):
        load_adapter(_tuned("conv_lora", {}, seed=2), path)  # another random vit_tiny base
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(_tuned("conv_lora", {}), path)  # the same base: no warning


def test_adapter_only_state_dict_loads_strictly(tmp_path) -> None:
    """An exported bundle's models/model.pt (adapter tensors under TunedSam names) loads with strict=True, as MONAI's
    ckpt_export does; a dict that lacks a trainable tensor or carries only some frozen ones stays an error."""
    trained = _tuned("lora", {"r": 4}, init_weights=False)
    adapter = {f"model.{k}": v for k, v in adapter_state_dict(trained).items()}
    fresh = _tuned("lora", {"r": 4})
    base_before = {k: v.clone() for k, v in fresh.state_dict().items() if k not in adapter}
    fresh.load_state_dict(adapter, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in adapter.items())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in base_before.items())  # the base stays
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in list(adapter.items())[1:]}, strict=True)
    some_frozen = {**adapter, next(iter(base_before)): next(iter(base_before.values()))}
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(some_frozen, strict=True)
    plain = tmp_path / "model.pt"
    torch.save(adapter, plain)
    with pytest.raises(AdapterLoadError, match="model.pt is a plain state dict .*load models/model.safetensors"):
        read_adapter(plain)


def test_run_checkpoint_view_round_trip_and_mismatch() -> None:
    from medsam_peft.engines import AdapterState

    trained = _tuned("conv_lora", {}, init_weights=False)
    state = AdapterState(trained).state_dict()
    fresh = _tuned("conv_lora", {})
    AdapterState(fresh).load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), trained.parameters()))
    with pytest.raises(AdapterLoadError, match="checkpoint does not fit this model: tuner 'conv_lora'"):
        AdapterState(_tuned("lora", {})).load_state_dict(state)


def test_decoder_shape_is_recorded_and_checked(tmp_path) -> None:
    """The decoder's shape is the model's: adapter files record it, loading rebuilds it, a mismatch is named."""
    one_token = get_tuned_model(build_sam("vit_tiny", mask_tokens=1), "lora", r=2, init_weights=False)
    path = save_adapter(one_token, tmp_path / "one.pt")
    assert read_adapter(path)["metadata"]["decoder"] == {"mask_tokens": 1, "num_classes": None}
    assert "mask_tokens" not in read_adapter(path)["metadata"]["options"]
    rebuilt = load_tuned_sam(path)
    assert rebuilt.model.num_mask_tokens == 1 and len(rebuilt.model.mask_decoder.output_hypernetworks_mlps) == 1
    with pytest.raises(AdapterLoadError, match=r"decoder \{'mask_tokens': 1, 'num_classes': None\} in the file vs "
                                               r"\{'mask_tokens': 4, 'num_classes': None\} in the model"):
        load_adapter(get_tuned_model(build_sam("vit_tiny"), "lora", r=2), path)
    with pytest.raises(ConfigError, match="mask_tokens is not a tuner option.*top-level setting 'mask_tokens'"):
        make_tuner_config("lora", mask_tokens=1)
    with pytest.raises(ConfigError, match="num_classes=3 needs mask_tokens"):
        build_sam("vit_tiny", num_classes=3, query_init="token0")
    # "reference": the decoder each paper counts with (Conv-LoRA's single token, SAM-PARSER's four)
    assert build_tuned_sam("vit_tiny", None, "conv_lora").model.num_mask_tokens == 1
    assert build_tuned_sam("vit_tiny", None, "sam_parser").model.num_mask_tokens == 4
    assert build_tuned_sam("vit_tiny", None, "conv_lora", mask_tokens=None).model.num_mask_tokens == 4


@pytest.mark.parametrize("tokens, classes", [(1, None), (None, None), (3, 2)], ids=["one", "sam", "semantic"])
def test_adapters_written_before_the_decoder_moved_keep_loading(tokens, classes, tmp_path) -> None:
    """0.x files kept mask_tokens / num_classes among the tuner options (null = SAM's four): they load unchanged."""
    torch.manual_seed(0)
    # multi-class files of that time hold the reference's queries: read back as query_init "token0"
    query_init = "token0" if classes else None
    base = build_sam("vit_tiny", mask_tokens=tokens, num_classes=classes, query_init=query_init)
    trained = get_tuned_model(base, "lora", r=2, init_weights=False).eval()
    payload = read_adapter(save_adapter(trained, tmp_path / "new.pt"))
    meta = dict(payload["metadata"])
    decoder = meta.pop("decoder")
    meta["options"] = {**meta["options"], "mask_tokens": tokens, "num_classes": classes}  # the old layout
    old = tmp_path / "old.pt"
    torch.save({**payload, "metadata": meta}, old)
    torch.manual_seed(0)  # the same random (frozen) vit_tiny weights as ``trained``
    loaded = load_tuned_sam(old).eval()
    assert loaded.model.decoder_shape == decoder
    x = _inputs()
    with torch.no_grad():  # load_tuned_sam runs SDPA attention, ``trained`` the official one: 1e-5, not bit-equal
        if classes is None:
            assert _close(loaded(x["image"], boxes=x["boxes"]), trained(x["image"], boxes=x["boxes"]))
        else:
            assert _close(loaded(x["image"])["classes"], trained(x["image"])["classes"])
