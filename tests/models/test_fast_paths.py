"""Correctness of each fast path: SDPA and chunked attention, activation checkpointing, the trunk embedding cache."""

from __future__ import annotations

import copy

import pytest
import torch

from medsam_peft.models import TrunkEmbeddingCache, build_sam, set_activation_checkpointing, set_attention_backend
from medsam_peft.tuners import build_tuned_sam, get_tuned_model
from medsam_peft.tuners.conv_lora import ScaleConvExpert, set_expert_fast_path
from medsam_peft.tuners.conv_lora.moe import window_bucket

BOXES = torch.tensor([[8.0, 10.0, 90.0, 100.0], [30.0, 20.0, 120.0, 70.0]])


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_step_grads(model, images, seed: int = 3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # Conv-LoRA's gate draws noise in training
    logits = model(images, boxes=BOXES)
    (logits.sigmoid().mean() + model.aux_loss()).backward()
    return logits.detach(), _grads(model)


# ---- SDPA ------------------------------------------------------------------------------------------------------
def test_sdpa_attention_equals_the_official_attention_in_values_and_gradients() -> None:
    # vit_tiny has a windowed block (0) and a global one (1), both with relative-position bias.
    model = build_tuned_sam("vit_tiny", tuner="lora", tuner_options={"init_weights": False})
    images = torch.rand(2, 3, 128, 128)
    eager_out, eager_grads = _train_step_grads(model, images)
    assert set_attention_backend(model.model.image_encoder, "sdpa") == 2
    sdpa_out, sdpa_grads = _train_step_grads(model, images)
    torch.testing.assert_close(sdpa_out, eager_out, atol=2e-5, rtol=1e-4)
    assert eager_grads.keys() == sdpa_grads.keys() and any("lora_A" in n for n in eager_grads)
    for name in eager_grads:
        torch.testing.assert_close(sdpa_grads[name], eager_grads[name], atol=1e-5, rtol=1e-3, msg=name)
    assert set_attention_backend(model.model.image_encoder, "eager") == 2
    assert torch.equal(_train_step_grads(model, images)[0], eager_out)  # back on the official code path


def test_auto_attention_uses_sdpa_without_autograd_and_the_official_path_with_it(monkeypatch) -> None:
    import medsam_peft.models.attention as attention

    model = build_tuned_sam("vit_tiny", tuner="lora")  # attention="auto" is the default
    calls = []
    real = attention._sdpa_forward
    monkeypatch.setattr(attention, "_sdpa_forward", lambda module, x: calls.append(1) or real(module, x))
    image = torch.rand(1, 3, 128, 128)
    _train_step_grads(model, image)
    assert calls == []
    model.eval()
    with torch.no_grad():
        auto = model(image, boxes=BOXES[:1])
    assert len(calls) == 2  # both blocks
    set_attention_backend(model.model.image_encoder, "eager")
    with torch.no_grad():
        torch.testing.assert_close(model(image, boxes=BOXES[:1]), auto, atol=2e-5, rtol=1e-4)


def test_attention_backend_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="attention must be one of .*'auto'"):
        build_tuned_sam("vit_tiny", tuner="lora", attention="flash")


# ---- chunked attention ------------------------------------------------------------------------------------------
def _official_core(q, k, v, rel_pos_h, rel_pos_w, size, scale):
    """The official attention core, written out from segment_anything's Attention.forward."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    attn = add_decomposed_rel_pos((q * scale) @ k.transpose(-2, -1), q, rel_pos_h, rel_pos_w, size, size)
    return attn.softmax(dim=-1) @ v


def test_chunked_attention_function_passes_gradcheck_and_equals_the_official_core() -> None:
    from medsam_peft.models.attention import RelPosAttentionFunction, chunked_rel_pos_attention

    g = torch.Generator().manual_seed(0)
    h, w, c, bh = 3, 4, 5, 2
    q, k, v = (torch.randn(bh, h * w, c, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rel_h = torch.randn(bh, h * w, h, generator=g, dtype=torch.float64, requires_grad=True)
    rel_w = torch.randn(bh, h * w, w, generator=g, dtype=torch.float64, requires_grad=True)
    for chunk in (1, 5, 12):  # one query per block, an uneven last block, all queries at once
        assert torch.autograd.gradcheck(RelPosAttentionFunction.apply, (q, k, v, rel_h, rel_w, 0.4, chunk))
    rel_pos_h = torch.randn(2 * h - 1, c, generator=g, dtype=torch.float64, requires_grad=True)
    rel_pos_w = torch.randn(2 * w - 1, c, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = (q, k, v, rel_pos_h, rel_pos_w)
    official = _official_core(*inputs, (h, w), 0.4)
    chunked = chunked_rel_pos_attention(*inputs, (h, w), 0.4, chunk_elements=bh * h * w * 5)
    torch.testing.assert_close(chunked, official, atol=1e-12, rtol=1e-12)
    grad = torch.randn(official.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(official, inputs, grad)
    for name, got, want in zip("q k v rel_pos_h rel_pos_w".split(), torch.autograd.grad(chunked, inputs, grad),
                               expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_attention_equals_the_official_attention_in_a_tuned_model(monkeypatch, dtype) -> None:
    import medsam_peft.models.attention as attention

    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * 2 * 64 * 10)  # 10 queries per block: 7 blocks, last of 4
    model = build_tuned_sam("vit_tiny", tuner="lora", tuner_options={"init_weights": False}, attention="eager")
    for name, p in model.named_parameters():  # also check the bias's own gradient path to SAM's rel-pos tables
        p.requires_grad_(p.requires_grad or "rel_pos" in name)
    images = torch.rand(2, 3, 128, 128)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        eager_out, eager_grads = _train_step_grads(model, images)
        assert set_attention_backend(model.model.image_encoder, "chunked") == 2
        chunked_out, chunked_grads = _train_step_grads(model, images)
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(chunked_out, eager_out, **tol)
    assert eager_grads.keys() == chunked_grads.keys() and sum("rel_pos" in n for n in eager_grads) == 4
    # Relative to each gradient's size, floored at 1e-3 of the largest: some (the decoder's key biases) are zero in
    # exact arithmetic and only rounding noise here.
    floor = 1e-3 * max(g.abs().max() for g in eager_grads.values())
    for name in eager_grads:
        scale = torch.clamp(eager_grads[name].abs().max(), min=floor)
        torch.testing.assert_close(chunked_grads[name] / scale, eager_grads[name] / scale, **tol, msg=name)


def _saved_for_backward(model, images) -> list[int]:
    """Element counts of the distinct tensors autograd keeps for one training step's backward."""
    sizes = {}

    def pack(t):
        sizes[(t.untyped_storage().data_ptr(), t.numel())] = t.numel()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images, boxes=BOXES[:1]).sum().backward()
    return list(sizes.values())


def test_chunked_attention_keeps_no_attention_matrix_for_backward() -> None:
    # vit_tiny's global block at 256²: 2 heads x 256 tokens x 256 tokens of probabilities in the official code.
    model = build_tuned_sam("vit_tiny", tuner="lora", image_size=256, attention="eager")
    images = torch.rand(1, 3, 256, 256)
    attention_matrix = 2 * 256 * 256
    eager = _saved_for_backward(model, images)
    assert max(eager) >= attention_matrix
    set_attention_backend(model.model.image_encoder, "chunked")
    chunked = _saved_for_backward(model, images)
    assert max(chunked) < attention_matrix
    # What is saved: the probabilities, less the (heads, tokens, 16) bias factors and scaled q the chunks keep.
    assert sum(eager) - sum(chunked) >= attention_matrix - 3 * (2 * 256 * 16)


def test_auto_attention_chunks_large_attention_in_training_and_inference(monkeypatch) -> None:
    import medsam_peft.models.attention as attention

    calls = []
    for name in ("_chunked_forward", "_sdpa_forward"):
        real = getattr(attention, name)
        monkeypatch.setattr(attention, name, lambda module, x, real=real, name=name: calls.append(
            (name.split("_")[1], x.shape[1])) or real(module, x))
    model = build_tuned_sam("vit_tiny", tuner="lora", image_size=256)  # "auto"; global block 16x16, windows 4x4
    image = torch.rand(1, 3, 256, 256)
    monkeypatch.setattr(attention, "CHUNKED_MIN_TOKENS", 256)
    _train_step_grads(model, image)
    assert calls == [("chunked", 16)]  # the global block; the windows take the official code in training
    model.eval()
    with torch.no_grad():
        model(image, boxes=BOXES[:1])
    assert calls[1:] == [("sdpa", 4), ("chunked", 16)]  # windows through SDPA without autograd
    calls.clear()
    monkeypatch.setattr(attention, "CHUNKED_MIN_TOKENS", 257)
    _train_step_grads(model, image)
    assert calls == []  # below the threshold: the official code
    model.eval()
    with torch.no_grad():
        model(image, boxes=BOXES[:1])
    assert calls == [("sdpa", 4), ("sdpa", 16)]


# ---- activation checkpointing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["vit_tiny", "lite_medsam"])
def test_activation_checkpointing_gives_the_same_gradients(backbone: str) -> None:
    # Conv-LoRA: noisy top-1 routing must be replayed identically when the blocks are recomputed in backward.
    size = 128 if backbone == "vit_tiny" else 256
    model = build_tuned_sam(backbone, tuner="conv_lora", image_size=size, tuner_options={"init_weights": False})
    images = torch.rand(2, 3, size, size)
    plain_out, plain_grads = _train_step_grads(model, images)
    blocks = set_activation_checkpointing(model.model.image_encoder, True)
    assert blocks == (2 if backbone == "vit_tiny" else 4)
    ckpt_out, ckpt_grads = _train_step_grads(model, images)
    torch.testing.assert_close(ckpt_out, plain_out, atol=0, rtol=0)
    assert plain_grads.keys() == ckpt_grads.keys() and any("conv_lora" in n for n in plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_recomputes_blocks_in_backward_only_when_training() -> None:
    model = build_tuned_sam("vit_tiny", tuner="lora", activation_checkpointing=True)
    calls = []
    model.model.image_encoder.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
    _train_step_grads(model, torch.rand(1, 3, 128, 128))
    assert len(calls) == 2  # forward + recomputation during backward
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 128), boxes=BOXES[:1])
    assert len(calls) == 1


# ---- frozen-trunk cache ----------------------------------------------------------------------------------------
def test_trunk_cache_hit_returns_identical_embeddings_and_training_is_unchanged() -> None:
    torch.manual_seed(0)
    reference = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager")
    cached = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager")
    cached.load_state_dict(reference.state_dict())
    cache = cached.enable_trunk_cache()
    assert cached.trunk_cache_split() == "encoder"
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = reference.model.encode_image(images)
        first = cached.model.encode_image(images)
        second = cached.model.encode_image(images)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert (cache.misses, cache.hits) == (2, 2)
    # A batch mixing a new and a cached image keeps the order (the new one is computed alone: batch size changes
    # the floating-point summation order, hence allclose there).
    mixed = torch.stack([torch.rand(3, 128, 128), images[1]])
    with torch.no_grad():
        out = cached.model.encode_image(mixed)
        torch.testing.assert_close(out[0], reference.model.encode_image(mixed)[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], expected[1])
    assert (cache.misses, cache.hits) == (3, 3)
    # Training through the cache: same logits and decoder gradients as without it.
    ref_out, ref_grads = _train_step_grads(reference, images)
    out, grads = _train_step_grads(cached, images)
    assert torch.equal(out, ref_out) and grads.keys() == ref_grads.keys()
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)


def test_trunk_cache_on_lite_medsam_serves_its_encoder_and_keys_on_its_weights(colin27_slice) -> None:
    # TinyViT holds 0-d buffers (BatchNorm's num_batches_tracked): fingerprinting them crashed every decoder_only
    # run on LiteMedSAM, the offline default, before this test.
    model = build_tuned_sam("lite_medsam", "bundled", tuner="decoder_only", trunk_cache="auto")
    cache = model.model.trunk_cache
    assert model.trunk_cache_split() == "encoder"
    image = colin27_slice["image"][None]
    with torch.no_grad():
        expected = model.model.image_encoder(image)  # LiteMedSAM feeds [0, 1] input unnormalised
        first, second = model.model.encode_image(image), model.model.encode_image(image)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert (cache.misses, cache.hits) == (1, 1)
    scope = cache.scope
    with torch.no_grad():
        next(model.model.image_encoder.parameters()).add_(1e-3)
    assert model.enable_trunk_cache().scope != scope  # other weights, other entries


def test_trunk_cache_keys_on_image_content_and_autocast() -> None:
    model = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager", trunk_cache="auto")
    cache = model.model.trunk_cache
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        model.model.encode_image(image)
        model.model.encode_image(image.flip(-1))  # augmented: a different input, a miss
        with torch.autocast("cpu", torch.bfloat16):
            model.model.encode_image(image)  # same image under autocast: a miss, not the fp32 entry
        model.model.encode_image(image)
    assert (cache.misses, cache.hits) == (3, 1)


def test_sam_parser_caches_the_vit_trunk_and_still_trains_the_neck() -> None:
    torch.manual_seed(0)
    reference = build_tuned_sam("vit_tiny", tuner="sam_parser", attention="eager")
    torch.manual_seed(0)  # same weights and the same SVD bases
    cached = build_tuned_sam("vit_tiny", tuner="sam_parser", attention="eager", trunk_cache="auto")
    assert cached.trunk_cache_split() == "neck"
    images = torch.rand(2, 3, 128, 128)
    _train_step_grads(cached, images)  # fills the cache
    ref_out, ref_grads = _train_step_grads(reference, images)
    out, grads = _train_step_grads(cached, images)  # neck runs on cached trunk tokens
    assert cached.model.trunk_cache.hits == 2
    # Cached tokens are a contiguous copy of the permuted view the official forward passes on: the neck's
    # convolutions may sum in another order (1e-7 differences), hence a float32 tolerance rather than equality.
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    neck = [n for n in ref_grads if "neck" in n]
    assert neck and grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_trunk_cache_refuses_tuners_that_train_the_trunk_and_auto_leaves_them_alone() -> None:
    with pytest.raises(ValueError, match="trains the image encoder's trunk.*trunk_cache='off'"):
        build_tuned_sam("vit_tiny", tuner="conv_lora", trunk_cache="memory")
    assert build_tuned_sam("vit_tiny", tuner="lora", trunk_cache="auto").model.trunk_cache is None


def test_disk_cache_survives_a_new_model_and_is_scoped_to_the_trunk_weights(tmp_path) -> None:
    torch.manual_seed(0)
    first = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager", trunk_cache=tmp_path)
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = first.model.encode_image(images)
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 2

    second = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager", trunk_cache=tmp_path)
    second.load_state_dict(first.state_dict())
    second.enable_trunk_cache(TrunkEmbeddingCache(tmp_path))  # re-bind: the fingerprint covers the loaded weights
    with torch.no_grad():
        assert torch.equal(second.model.encode_image(images), expected)
    assert second.model.trunk_cache.hits == 2

    files[0].write_bytes(b"truncated")  # a corrupt entry is recomputed, not returned
    third = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager")
    third.load_state_dict(first.state_dict())
    cache = third.enable_trunk_cache(TrunkEmbeddingCache(tmp_path))
    with torch.no_grad():  # the recomputed image runs alone (batch 1): float32 summation order, hence allclose
        torch.testing.assert_close(third.model.encode_image(images), expected, atol=1e-5, rtol=1e-5)
    assert (cache.hits, cache.misses) == (1, 1)
    assert torch.load(files[0], weights_only=True).shape == expected.shape[1:]  # rewritten whole

    other = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager", trunk_cache=tmp_path)  # other weights: other scope
    with torch.no_grad():
        other.model.encode_image(images)
    assert other.model.trunk_cache.hits == 0 and len(list(tmp_path.rglob("*.pt"))) == 4


def test_memory_budget_stops_keeping_entries_instead_of_evicting() -> None:
    model = build_tuned_sam("vit_tiny", tuner="decoder_only", attention="eager")
    with torch.no_grad():
        embedding = model.model.encode_image(torch.rand(1, 3, 128, 128))
    one_entry = embedding[0].numel() * embedding.element_size() / 2**30
    cache = model.enable_trunk_cache(TrunkEmbeddingCache(max_memory_gib=1.5 * one_entry))
    with torch.no_grad():
        batch = torch.rand(3, 3, 128, 128)
        model.model.encode_image(batch)
        model.model.encode_image(batch)
    assert len(cache.memory) == 1 and (cache.misses, cache.hits) == (5, 1)


# ---- Conv-LoRA experts as matrix products on the CPU ------------------------------------------------------------
def test_conv_lora_expert_fast_path_equals_the_plain_path_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", tuner="conv_lora", tuner_options={"init_weights": False})
    images = torch.randn(2, 3, 128, 128)
    assert set_expert_fast_path(model, False) > 0
    plain_logits, plain_grads = _train_step_grads(model, images)
    set_expert_fast_path(model, True)
    fast_logits, fast_grads = _train_step_grads(model, images)
    assert plain_grads.keys() == fast_grads.keys()
    assert any("conv_lora_experts" in name for name in fast_grads)
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("scale", [1, 2, 5, 8])
@pytest.mark.parametrize("count", [1, 5, 37])  # 37 windows are padded to 64
def test_conv_lora_expert_matrix_form_is_the_plain_expert_in_float64(scale, count) -> None:
    """Up-scaling + 3x3 convolution as products with the shifted bicubic matrices, the window padding and the
    bicubic down-scaling: the plain expert's values and gradients (input, weight, bias) to float64 rounding, on a
    non-square grid with a non-zero bias."""
    torch.manual_seed(scale * 100 + count)
    expert = ScaleConvExpert(3, scale=scale).double()
    torch.nn.init.normal_(expert.conv.weight, std=0.5)
    torch.nn.init.normal_(expert.conv.bias, std=0.5)
    x = torch.randn(count, 3, 6, 9, dtype=torch.float64)
    upstream = torch.randn(count, 3, 6, 9, dtype=torch.float64)
    results = []
    for fast in (False, True):
        expert.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_(True)
        out = expert._fast(inp) if fast else expert(inp)  # forward runs the plain path for float64 input
        (out * upstream).sum().backward()
        results.append([out.detach(), inp.grad, expert.conv.weight.grad, expert.conv.bias.grad])
    for plain, fast, what in zip(*results, ("output", "input grad", "weight grad", "bias grad")):
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12 * max(1.0, float(plain.abs().max())), msg=what)


def test_conv_lora_expert_fast_path_takes_monai_metatensors() -> None:
    """Images from a MONAI pipeline are MetaTensors with per-image metadata, and so are the activations; the windows
    cut from them (6 from 2 images, padded to 8) must not be sliced as a batch of images (MONAI refused: inconsistent
    batched metadata)."""
    from monai.data import MetaTensor
    from monai.data.utils import list_data_collate

    torch.manual_seed(0)
    expert = ScaleConvExpert(3, scale=2)
    torch.nn.init.normal_(expert.conv.weight)
    images = list_data_collate([{"image": MetaTensor(torch.randn(3, 7, 21), meta={"filename_or_obj": f"{i}.png"})}
                                for i in range(2)])["image"]
    windows = images.reshape(2, 3, 7, 3, 7).permute(0, 3, 1, 2, 4).reshape(6, 3, 7, 7)
    assert isinstance(windows, MetaTensor) and windows.is_batch
    torch.testing.assert_close(expert(windows).as_subclass(torch.Tensor), expert(windows.as_tensor()))


def test_window_bucket_rounds_up_to_few_shapes() -> None:
    assert [window_bucket(n) for n in (1, 2, 3, 5, 17, 32, 33, 64, 65, 90)] == [1, 2, 4, 8, 32, 32, 64, 64, 96, 96]


def test_conv_lora_expert_path_per_dtype_autocast_and_switch() -> None:
    """The matrix form runs for float32 without autocast and for bf16 input under bf16 autocast, with or without
    autograd; float32 input under autocast and the switched-off expert run the convolution (the plain path)."""
    torch.manual_seed(0)
    expert = ScaleConvExpert(3, scale=3)
    torch.nn.init.normal_(expert.conv.weight)
    convolutions: list[torch.dtype] = []
    expert.conv.register_forward_hook(lambda module, args, out: convolutions.append(args[0].dtype))
    x = torch.randn(4, 3, 14, 14)
    fast = expert(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            inference = expert(x.bfloat16())
        training = expert(x.bfloat16().requires_grad_(True))
        assert convolutions == []  # three calls, no convolution module ran
        expert(x)  # float32 input under autocast (not what the bottleneck gives): the plain path
    expert.cpu_fast_path = False
    plain = expert(x)
    assert convolutions == [torch.float32, torch.float32]
    assert inference.dtype == training.dtype == torch.bfloat16 and training.requires_grad
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1, 4, 8])
def test_conv_lora_expert_bf16_fast_path_is_as_accurate_as_the_plain_bf16_path(scale) -> None:
    """Under bf16 autocast both paths compute in bf16; against a float64 evaluation of the expert the fast path's
    output and gradients (input, convolution weight) err no more than the plain path's, within bf16 rounding."""
    torch.manual_seed(scale)
    expert = ScaleConvExpert(3, scale=scale)
    torch.nn.init.normal_(expert.conv.weight, std=0.5)
    x = torch.randn(24, 3, 7, 7).bfloat16()
    upstream = torch.randn(24, 3, 7, 7)

    def run(fast: bool, dtype: torch.dtype = torch.bfloat16):
        expert.cpu_fast_path = fast
        probe = copy.deepcopy(expert).to(dtype) if dtype == torch.float64 else expert
        probe.zero_grad(set_to_none=True)
        inp = x.to(dtype).clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float64):
            out = probe(inp)
        (out.double() * upstream.double()).sum().backward()
        return [t.detach().double() for t in (out, inp.grad, probe.conv.weight.grad)]

    truth = run(False, torch.float64)
    for plain, fast, exact, what in zip(run(False), run(True), truth, ("output", "input grad", "weight grad")):
        plain_error, fast_error = (plain - exact).abs().max(), (fast - exact).abs().max()
        assert fast_error <= 2 * plain_error + 1e-6, (what, float(fast_error), float(plain_error))
        assert fast_error <= 2 ** -6 * exact.abs().max(), (what, float(fast_error))  # bf16: 8 significant bits


def test_conv_lora_bf16_training_step_fast_path_matches_the_plain_path_in_a_tuned_model() -> None:
    """A bf16 training step (what the bundles run on a bf16 CPU) through the matrix-form experts: the same logits and
    parameter gradients as the plain experts, to bf16 rounding."""
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", tuner="conv_lora", tuner_options={"init_weights": False})
    images = torch.randn(2, 3, 128, 128)
    runs = {}
    for fast in (False, True):
        set_expert_fast_path(model, fast)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs[fast] = _train_step_grads(model, images)
    (plain_logits, plain_grads), (fast_logits, fast_grads) = runs[False], runs[True]
    assert any("conv_lora_experts" in name for name in fast_grads) and plain_grads.keys() == fast_grads.keys()
    assert float((fast_logits.float() - plain_logits.float()).abs().max()) < 0.05 * float(plain_logits.abs().max())
    largest = max(float(grad.norm()) for grad in plain_grads.values())
    compared = 0
    for name, grad in plain_grads.items():
        if float(grad.norm()) < 1e-4 * largest:
            continue  # the attention key biases: softmax ignores a shift shared by all keys, their gradient is noise
        cosine = torch.nn.functional.cosine_similarity(fast_grads[name].flatten().double(),
                                                       grad.flatten().double(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
        compared += 1
    assert compared > 100


def test_conv_lora_bf16_inference_fast_path_matches_the_plain_path_in_a_tuned_model() -> None:
    """bf16 inference (what the label server and evaluation run on a bf16 CPU): same probabilities to bf16 noise."""
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", tuner="conv_lora", tuner_options={"init_weights": False}).eval()
    images = torch.rand(2, 3, 128, 128)
    probabilities = {}
    for fast in (False, True):
        set_expert_fast_path(model, fast)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            probabilities[fast] = model(images, boxes=BOXES).float().sigmoid()
    difference = (probabilities[True] - probabilities[False]).abs()
    assert float(difference.mean()) < 5e-3 and float(difference.max()) < 0.1, (difference.mean(), difference.max())
    assert not torch.equal(probabilities[True], probabilities[False])  # the two paths did run different arithmetic
