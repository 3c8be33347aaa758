"""Conv-LoRA's multi-class decoder: structure and count, set loss vs brute force, metrics vs scikit-learn, the
Trans10K bundle on a real multi-label case (Colin27 AAL structures as classes), Trans10K preparation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow
from PIL import Image
from sklearn.metrics import confusion_matrix

from medsam_peft.cli import main
from medsam_peft.data import prepare_colin27_aal, prepare_dataset
from medsam_peft.data.catalog import DatasetUnavailable
from medsam_peft.errors import ConfigError
from medsam_peft.engines import (
    AutocastInferer,
    MaskClassificationLoss,
    SemanticSegmentationMetric,
)
from medsam_peft.models import build_sam, set_attention_backend
from medsam_peft.transforms import SemanticFromQueries
from medsam_peft.tuners import build_tuned_sam, get_tuned_model, load_tuned_sam, save_adapter
from tests.conftest import COLIN27_DIR

REPO = Path(__file__).resolve().parents[2]


def _semantic(seed: int = 0, queries: int | None = None, classes: int = 3, query_init: str | None = None):
    torch.manual_seed(seed)
    return get_tuned_model(build_sam("vit_tiny", mask_tokens=queries, num_classes=classes, query_init=query_init),
                           "conv_lora", init_weights=False)


def test_vit_h_count_adds_queries_and_class_head_as_the_reference(capsys) -> None:
    main(["params", "--backbone", "vit_h", "--tuner", "conv_lora", "--mask-tokens", "10",
          "--num-classes", "12", "--query-init", "token0", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == 4_020_096 + (10 - 1) * 256 + 257 * (12 + 1)  # peft-methods.md section 2.8


def test_vit_h_count_of_the_per_class_queries(capsys) -> None:
    """The default decoder: 12 queries, each with its own copy of the hypernetwork MLP (256-256-256-32)."""
    main(["params", "--backbone", "vit_h", "--tuner", "conv_lora", "--num-classes", "12", "--json"])
    report = json.loads(capsys.readouterr().out)
    mlp = (256 * 256 + 256) * 2 + 256 * 32 + 32
    assert report["trainable"] == 4_020_096 + (12 - 1) * (256 + mlp) + 257 * (12 + 1)


def test_queries_start_from_the_pretrained_token_and_share_one_hypernetwork() -> None:
    """query_init="token0" is still the reference: copies of token 0, one shared MLP."""
    base = build_sam("vit_tiny")
    token0 = base.mask_decoder.mask_tokens.weight[0].detach().clone()
    mlp0 = base.mask_decoder.output_hypernetworks_mlps[0]
    base.set_semantic_queries(5, 4, query_init="token0")
    decoder = base.mask_decoder
    assert torch.equal(decoder.mask_tokens.weight.detach(), token0.expand(5, -1))
    assert len(decoder.output_hypernetworks_mlps) == 1 and decoder.output_hypernetworks_mlps[0] is mlp0
    assert decoder.output_classifier.out_features == 5 and base.num_classes == 4
    out = base(torch.rand(2, 3, 128, 128))
    assert out["masks"].shape == (2, 5, 128, 128) and out["classes"].shape == (2, 5, 5)
    with pytest.raises(ValueError, match="prompt-free"):
        base(torch.rand(1, 3, 128, 128), boxes=torch.tensor([[1.0, 1.0, 50.0, 50.0]]))


def _min_pairwise_distance(rows: torch.Tensor) -> float:
    distances = torch.cdist(rows.detach().float(), rows.detach().float())
    return float(distances[~torch.eye(len(rows), dtype=torch.bool)].min())


def test_default_queries_differ_at_init_and_stay_different() -> None:
    """query_init="class": query c starts from SAM's token c mod 4 plus noise, owns a copy of the pretrained MLP 0,
    and is trained on class c only; after training the queries (and their masks) are still apart."""
    torch.manual_seed(0)
    base = build_sam("vit_tiny")
    pretrained = base.mask_decoder.mask_tokens.weight.detach().clone()
    mlp0 = {k: v.clone() for k, v in base.mask_decoder.output_hypernetworks_mlps[0].state_dict().items()}
    base.set_decoder_shape(None, 3)  # the default query_init
    decoder = base.mask_decoder
    assert base.query_init == "class" and base.num_mask_tokens == 3 and len(decoder.output_hypernetworks_mlps) == 3
    assert base.decoder_shape == {"mask_tokens": 3, "num_classes": 3, "query_init": "class"}
    tokens = decoder.mask_tokens.weight.detach()
    noise = (tokens - pretrained[:3]) / pretrained.std()
    assert 0.5 < float(noise.std()) < 1.5 and _min_pairwise_distance(tokens) > 1.0
    for mlp in decoder.output_hypernetworks_mlps:
        assert all(torch.equal(mlp.state_dict()[k], v) for k, v in mlp0.items())
    assert len({id(mlp) for mlp in decoder.output_hypernetworks_mlps}) == 3
    model = get_tuned_model(base, "conv_lora", init_weights=False).train()
    loss = MaskClassificationLoss(3, num_points=None, matching="by_class")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    label = torch.zeros(2, 1, 128, 128, dtype=torch.long)
    label[:, :, 20:60, 20:60], label[:, :, 70:110, 70:110] = 1, 2
    image = torch.rand(2, 3, 128, 128)
    losses = []
    for _ in range(5):
        value = loss(model(image), label)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    assert losses[-1] < losses[0]
    assert _min_pairwise_distance(decoder.mask_tokens.weight) > 1.0
    with torch.no_grad():
        masks = model.eval()(image)["masks"][0].flatten(1)
    assert _min_pairwise_distance(masks) > 1.0
    with pytest.raises(ConfigError, match="query_init 'class' holds one query per class: mask_tokens must be null"):
        build_sam("vit_tiny", mask_tokens=4, num_classes=3)
    with pytest.raises(ConfigError, match="query_init must be one of"):
        build_sam("vit_tiny", mask_tokens=4, num_classes=3, query_init="random")


def test_perturbed_queries_are_token0_plus_noise_with_one_shared_hypernetwork() -> None:
    torch.manual_seed(0)
    base = build_sam("vit_tiny")
    pretrained = base.mask_decoder.mask_tokens.weight.detach().clone()
    mlp0 = base.mask_decoder.output_hypernetworks_mlps[0]
    base.set_decoder_shape(6, 3, "perturbed")
    tokens = base.mask_decoder.mask_tokens.weight.detach()
    assert 0.5 < float(((tokens - pretrained[0]) / pretrained.std()).std()) < 1.5
    assert _min_pairwise_distance(tokens) > 1.0
    assert list(base.mask_decoder.output_hypernetworks_mlps) == [mlp0]


def test_semantic_map_is_the_softmax_weighted_sum_of_sigmoid_masks() -> None:
    g = torch.Generator().manual_seed(0)
    pred = {"masks": torch.randn(4, 6, 5, generator=g), "classes": torch.randn(4, 4, generator=g)}
    expected = torch.zeros(3, 6, 5)
    for q in range(4):
        probs = torch.exp(pred["classes"][q]) / torch.exp(pred["classes"][q]).sum()
        for c in range(3):  # the last column, "no object", is dropped
            expected[c] += probs[c] * torch.sigmoid(pred["masks"][q])
    assert torch.allclose(SemanticFromQueries()(pred), expected, atol=1e-6)


def test_probabilities_output_is_the_semantic_map_of_the_queries_for_each_image() -> None:
    """semantic_output "probabilities" (an exported bundle's network_def, for MONAI's bundle tools): one (B, C, S, S)
    tensor equal, image by image, to SemanticFromQueries of the queries the default forward returns."""
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", None, "lora", image_size=64, mask_tokens=None, num_classes=3).eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        queries = model(image)
        model.model.semantic_output = "probabilities"
        probabilities = model(image)
    assert probabilities.shape == (2, 3, 64, 64)
    for i in range(2):
        expected = SemanticFromQueries()({k: v[i] for k, v in queries.items()})
        assert torch.allclose(probabilities[i], expected, atol=1e-6)
    assert not torch.allclose(probabilities[0], probabilities[1], atol=1e-3)  # each image its own map


def _independent_set_loss(masks, classes, label, num_classes, no_object=0.1, by_class=False):
    """Brute-force matching over all query permutations (or query c = class c), then CE + BCE + Dice by hand."""
    present = sorted(int(v) for v in np.unique(label))
    targets = np.stack([(label == c).astype(np.float64) for c in present]).reshape(len(present), -1)
    logits = masks.reshape(masks.shape[0], -1).astype(np.float64)
    prob = 1 / (1 + np.exp(-logits))
    soft = np.exp(classes) / np.exp(classes).sum(-1, keepdims=True)

    def bce(lg, t):
        return np.mean(np.maximum(lg, 0) - lg * t + np.log1p(np.exp(-np.abs(lg))))

    def dice(p, t):
        return 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)

    best, best_perm = math.inf, tuple(present) if by_class else None
    for perm in [] if by_class else itertools.permutations(range(masks.shape[0]), len(present)):
        cost = sum(-soft[q, present[j]] + 5 * bce(logits[q], targets[j]) + 5 * dice(prob[q], targets[j])
                   for j, q in enumerate(perm))
        if cost < best:
            best, best_perm = cost, perm
    class_targets = np.full(masks.shape[0], num_classes)
    for j, q in enumerate(best_perm):
        class_targets[q] = present[j]
    weights = np.where(class_targets == num_classes, no_object, 1.0)
    log_soft = np.log(soft)
    ce = -(weights * log_soft[np.arange(len(class_targets)), class_targets]).sum() / weights.sum()
    mask_bce = np.mean([bce(logits[q], targets[j]) for j, q in enumerate(best_perm)])
    mask_dice = np.mean([dice(prob[q], targets[j]) for j, q in enumerate(best_perm)])
    return ce + mask_bce + mask_dice


def test_set_loss_equals_brute_force_matching_and_hand_written_terms() -> None:
    g = torch.Generator().manual_seed(1)
    masks, classes = torch.randn(1, 5, 12, 10, generator=g), torch.randn(1, 5, 4, generator=g)
    label = torch.zeros(1, 1, 12, 10, dtype=torch.long)
    label[..., 2:7, 1:5], label[..., 8:11, 6:9] = 1, 2
    got = MaskClassificationLoss(num_classes=3, num_points=None)({"masks": masks, "classes": classes}, label)
    expected = _independent_set_loss(masks[0].numpy(), classes[0].numpy(), label[0, 0].numpy(), 3)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_by_class_matching_pairs_query_c_with_class_c() -> None:
    g = torch.Generator().manual_seed(3)
    masks, classes = torch.randn(1, 3, 12, 10, generator=g), torch.randn(1, 3, 4, generator=g)
    label = torch.zeros(1, 1, 12, 10, dtype=torch.long)
    label[..., 8:11, 6:9] = 2  # class 1 absent: query 1 is "no object"
    loss = MaskClassificationLoss(num_classes=3, num_points=None, matching="by_class")
    expected = _independent_set_loss(masks[0].numpy(), classes[0].numpy(), label[0, 0].numpy(), 3, by_class=True)
    assert float(loss({"masks": masks, "classes": classes}, label)) == pytest.approx(expected, rel=1e-5)
    hungarian = MaskClassificationLoss(num_classes=3, num_points=None)({"masks": masks, "classes": classes}, label)
    assert float(hungarian) != pytest.approx(expected, rel=1e-3)  # the assignment is what differs
    with pytest.raises(ValueError, match="one query per class: 4 queries for num_classes=3"):
        loss({"masks": torch.randn(1, 4, 12, 10), "classes": torch.randn(1, 4, 4)}, label)


def test_importance_sampling_takes_the_least_confident_candidates() -> None:
    """Mask2Former's point sampling: of 3 x P uniform candidates the 0.75 x P with the smallest |logit|, then
    0.25 x P uniform points; re-derived here from the same random draws."""
    loss = MaskClassificationLoss(3, num_points=40)
    logits = torch.randn(2, 30 * 30, generator=torch.Generator().manual_seed(4)) * 5
    valid = torch.arange(30 * 30)[torch.arange(30 * 30) % 7 != 0]  # some pixels ignored
    torch.manual_seed(5)
    points = loss.sample_points(logits, valid)
    torch.manual_seed(5)
    candidates = valid[torch.randint(valid.numel(), (2, 120))]
    uniform = valid[torch.randint(valid.numel(), (2, 10))]
    assert points.shape == (2, 40) and bool(torch.isin(points, valid).all())
    for row in range(2):
        order = np.argsort(np.abs(logits[row, candidates[row]].numpy()), kind="stable")
        expected = np.sort(candidates[row].numpy()[order[:30]])
        assert np.array_equal(np.sort(points[row, :30].numpy()), expected)
        assert np.array_equal(points[row, 30:].numpy(), uniform[row].numpy())
    # the sampled points are less confident than uniform ones: where the loss is still undecided
    assert float(logits.gather(1, points[:, :30]).abs().mean()) < 0.5 * float(logits.abs().mean())


def test_set_loss_ignores_255_and_rejects_too_many_classes() -> None:
    g = torch.Generator().manual_seed(2)
    pred = {"masks": torch.randn(1, 3, 8, 8, generator=g), "classes": torch.randn(1, 3, 4, generator=g)}
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[..., :4, :] = 1
    ignored = label.clone()
    ignored[..., :, :2] = 255
    loss = MaskClassificationLoss(3, num_points=None)
    trimmed = {"masks": pred["masks"][..., 2:], "classes": pred["classes"]}
    assert float(loss(pred, ignored)) == pytest.approx(float(loss(trimmed, label[..., 2:])), rel=1e-6)
    label[..., 0, 0], label[..., 0, 1] = 2, 2
    with pytest.raises(ValueError, match="label holds class 3 but num_classes=3"):
        loss(pred, label + (label == 2).long())
    with pytest.raises(ValueError, match="holds 3 classes but the decoder has only 2 queries"):
        loss({"masks": pred["masks"][:, :2], "classes": pred["classes"][:, :2]}, label)


def test_metrics_accumulate_over_the_dataset_like_a_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 4, (1, 9, 7)) for _ in range(5)]
    labels = [rng.integers(0, 4, (1, 9, 7)) for _ in range(5)]
    labels[2][0, :3] = 255
    labels[4][labels[4] == 3] = 0  # class 3 absent from one image: IoU is accumulated, not averaged per image
    metrics = {r: SemanticSegmentationMetric(4, r) for r in ("miou", "foreground_miou", "pixel_accuracy", 0, 3)}
    for metric in metrics.values():
        for i in range(0, 5, 2):
            metric.update((preds[i : i + 2], labels[i : i + 2]))
    y_true = np.concatenate([l.ravel() for l in labels])
    y_pred = np.concatenate([p.ravel() for p in preds])
    keep = y_true != 255
    cm = confusion_matrix(y_true[keep], y_pred[keep], labels=range(4))
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert metrics["miou"].compute() == pytest.approx(iou.mean())
    assert metrics["foreground_miou"].compute() == pytest.approx(iou[1:].mean())
    assert metrics["pixel_accuracy"].compute() == pytest.approx(np.diag(cm).sum() / cm.sum())
    assert metrics[0].compute() == pytest.approx(iou[0]) and metrics[3].compute() == pytest.approx(iou[3])


def test_semantic_adapter_round_trip(tmp_path) -> None:
    trained = _semantic().eval()
    path = save_adapter(trained, tmp_path / "semantic.pt")
    torch.manual_seed(0)  # the same random frozen base as _semantic(seed=0); the file restores the rest
    rebuilt = load_tuned_sam(path).eval()
    # load_tuned_sam serves inference through SDPA attention (equal to 1e-7); compare on the official code path.
    set_attention_backend(rebuilt.model.image_encoder, "eager")
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a, b = trained(x), rebuilt(x)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["classes"], b["classes"])


def test_one_step_separates_the_queries() -> None:
    """All queries start identical (the reference's init); Hungarian matching gives them different targets."""
    model = _semantic(queries=3, classes=3, query_init="token0")
    with torch.no_grad():
        model.model.mask_decoder.mask_tokens.weight.copy_(model.model.mask_decoder.mask_tokens.weight[:1].expand(3, -1))
    label = torch.zeros(1, 1, 128, 128, dtype=torch.long)
    label[..., 20:60, 20:60], label[..., 70:110, 70:110] = 1, 2
    MaskClassificationLoss(3, num_points=None)(model.train()(torch.rand(1, 3, 128, 128)), label).backward()
    grad = model.model.mask_decoder.mask_tokens.weight.grad
    assert not torch.allclose(grad[0], grad[1]) and not torch.allclose(grad[1], grad[2])


def test_trans10k_bundle_on_real_aal_structures_as_classes(tmp_path, monkeypatch, lite_medsam_state) -> None:
    """The Trans10K bundle, unchanged but for the data and a small model, on Colin27 slices whose mask holds four
    AAL structures as classes 1..4; the reported mIoU equals one recomputed with scikit-learn from the adapter."""
    data = tmp_path / "data"
    prepare_colin27_aal(data, source=COLIN27_DIR, structures=(71, 72, 73, 74), min_pixels=200, slice_step=4,
                        multiclass=True)
    datalist = json.loads((data / "datalist.json").read_text())
    assert datalist["meta"]["classes"] == ["background", "Caudate_L", "Caudate_R", "Putamen_L", "Putamen_R"]
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    options = {"r": 3}
    workflow = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "conv_lora_trans10k.json"), workflow_type="train", bundle_root=str(REPO),
        dataset_dir=str(data), output_dir=str(out), backbone="lite_medsam", checkpoint="bundled", image_size=256,
        squash=False, tuner_options=options, mask_tokens=6, num_classes=5, query_init="token0", max_epochs=1, batch_size=2, accumulation_steps=1, num_workers=0,
        train_augmentation=[], learning_rate=1e-3, tracking_uri=f"sqlite:///{out / 'mlruns.db'}",
        experiment_name="semantic")
    workflow.initialize()
    workflow.run()
    metrics = dict(workflow.parser.get_parsed_content("validate#evaluator").state.metrics)
    workflow.finalize()
    names = ["val_miou", "val_pixel_accuracy"] + [f"val_iou_{c}" for c in datalist["meta"]["classes"]]
    assert set(names) <= set(metrics)
    assert metrics["val_miou"] == pytest.approx(np.mean([metrics[f"val_iou_{c}"] for c in datalist["meta"]["classes"]]))

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    run = client.search_runs([client.get_experiment_by_name("semantic").experiment_id])[0]
    assert run.data.metrics["val_iou_Putamen_R"] == pytest.approx(metrics["val_iou_Putamen_R"])

    model = load_tuned_sam(out / "adapter_final.safetensors", checkpoint="bundled").eval()
    y_true, y_pred = [], []
    for entry in datalist["validation"]:
        image = np.asarray(Image.open(data / entry["image"]).convert("RGB"), dtype=np.float32) / 255
        label = np.asarray(Image.open(data / entry["label"]))
        h, w = label.shape
        scale = 256 / max(h, w)
        size = (round(h * scale), round(w * scale))
        x = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size, mode="bilinear",
                          align_corners=False)
        x = F.pad(x, (0, 256 - size[1], 0, 256 - size[0]))
        with torch.no_grad():
            pred = AutocastInferer("auto")(x, model)  # the bundle's default precision
        semantic = SemanticFromQueries()({k: v[0] for k, v in pred.items()}).argmax(0).numpy()
        target = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=size,
                               mode="nearest-exact")[0, 0].numpy()
        target = np.pad(target, ((0, 256 - size[0]), (0, 256 - size[1])))
        y_true.append(target.ravel())
        y_pred.append(semantic.ravel())
    cm = confusion_matrix(np.concatenate(y_true), np.concatenate(y_pred), labels=range(5))
    iou = np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1e-16)
    assert iou.mean() == pytest.approx(metrics["val_miou"], abs=0.02)


def test_prepare_trans10k_reads_class_id_masks_and_refuses_colour_ones(tmp_path) -> None:
    source = tmp_path / "Trans10K_cls12"
    for split, count in (("train", 3), ("validation", 2), ("test", 1)):
        (source / split / "images").mkdir(parents=True)
        (source / split / "masks_12").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(source / split / "images" / f"{i}.jpg")
            mask = np.zeros((20, 30), np.uint8)
            mask[5:10, 5:20] = 1 + i
            Image.fromarray(mask).save(source / split / "masks_12" / f"{i}_mask.png")
    path = prepare_dataset("trans10k", tmp_path / "prepared", source=source)
    datalist = json.loads(path.read_text())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [3, 2, 1]
    assert datalist["meta"]["classes"][0] == "background" and len(datalist["meta"]["classes"]) == 12
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(source / "train" / "masks_12" / "0_mask.png")
    with pytest.raises(DatasetUnavailable, match="0_mask.png: a RGB mask.*class-id"):
        prepare_dataset("trans10k", tmp_path / "again", source=source)
