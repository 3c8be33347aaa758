"""The simulated annotator (training prompts, click protocol) and its metrics, against independent re-computations:
brute-force click placement, SAM's own SamPredictor for mask prompts, plain forwards for every channel, NumPy NoC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_peft import build_tuned_sam
from medsam_peft.engines.interactive import (
    NumberOfClicksMetric,
    SimulatedAnnotator,
    background_click,
    centre_click,
    decode_clicks,
    random_error_click,
    settled_negative,
)


def _depth_brute_force(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest pixel outside it, the image's outside counting as outside."""
    height, width = region.shape
    rows, cols = np.mgrid[-1:height + 1, -1:width + 1]
    padded = np.pad(region, 1)
    outside = np.stack([rows[~padded], cols[~padded]], 1)
    depth = np.zeros(region.shape)
    for r, c in zip(*np.nonzero(region)):
        depth[r, c] = np.sqrt(((outside - [r, c]) ** 2).sum(1)).min()
    return depth


@pytest.mark.parametrize("seed", range(4))
def test_centre_click_is_the_deepest_error_pixel_and_labelled_by_its_kind(seed) -> None:
    rng = np.random.RandomState(seed)
    target = np.zeros((24, 28), bool)
    target[4:16, 3:20] = True
    prediction = np.zeros_like(target)
    prediction[rng.randint(0, 8):rng.randint(12, 24), rng.randint(0, 10):rng.randint(14, 28)] = True
    x, y, label = centre_click(prediction, target)
    fn, fp = _depth_brute_force(target & ~prediction), _depth_brute_force(prediction & ~target)
    deepest = max(fn.max(), fp.max())
    chosen = (fn if label == 1 else fp)[int(y), int(x)]
    assert chosen == pytest.approx(deepest)
    assert label == (1 if fn.max() >= fp.max() else 0)
    assert bool(target[int(y), int(x)]) == (label == 1)


def test_centre_click_on_an_empty_prediction_is_inside_the_object_and_none_when_exact() -> None:
    target = np.zeros((30, 30), bool)
    target[5:15, 5:25] = True  # 10 x 20: the deepest pixels lie on the middle rows
    x, y, label = centre_click(np.zeros_like(target), target)
    assert label == 1 and y in (9.0, 10.0) and 9 <= x <= 20
    assert centre_click(target.copy(), target) is None
    rng = np.random.RandomState(0)
    assert random_error_click(target.copy(), target, rng) is None
    wrong = target.copy()
    wrong[20:25, 20:25] = True
    for _ in range(20):
        x, y, label = random_error_click(wrong, target, rng)
        assert wrong[int(y), int(x)] != target[int(y), int(x)] and label == 0


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_tuned_sam("vit_tiny", None, "lora", image_size=64, mask_tokens=None).eval()


def _target(batch: int = 2) -> torch.Tensor:
    target = torch.zeros(batch, 1, 64, 64)
    target[0, 0, 10:30, 12:40] = 1
    target[-1, 0, 30:60, 20:50] = 1
    return target


def test_padding_points_and_nan_boxes_decode_each_image_as_if_alone(tiny_model) -> None:
    image = torch.rand(2, 3, 64, 64)
    points = torch.tensor([[[20.0, 20.0], [0.0, 0.0]], [[30.0, 40.0], [45.0, 50.0]]])
    labels = torch.tensor([[1.0, -1.0], [1.0, 0.0]])
    boxes = torch.tensor([[float("nan")] * 4, [20.0, 30.0, 50.0, 60.0]])
    with torch.no_grad():
        both = tiny_model(image, boxes, points, labels)
        first = tiny_model(image[:1], None, points[:1, :1], labels[:1, :1])
        second = tiny_model(image[1:], boxes[1:], points[1:], labels[1:])
    torch.testing.assert_close(both[:1], first)  # equal up to batched-vs-single encoder rounding
    torch.testing.assert_close(both[1:], second)


def test_mask_prompt_matches_segment_anythings_predictor(tiny_model) -> None:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    sam = tiny_model.model
    official = Sam(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder).eval()
    predictor = SamPredictor(official)
    image = torch.rand(1, 3, 64, 64)
    mask_input = torch.randn(1, 1, 16, 16) * 4
    points, labels = torch.tensor([[[20.0, 22.0], [40.0, 30.0]]]), torch.tensor([[1.0, 0.0]])
    with torch.no_grad():
        ours = sam.decode(sam.encode_image(image), None, points, labels, mask_input)
        without = sam.decode(sam.encode_image(image), None, points, labels)
        predictor.features = sam.encode_image(image)  # the same embedding (SamPredictor normalises 0-255 input)
        predictor.is_image_set, predictor.original_size, predictor.input_size = True, (64, 64), (64, 64)
        _, _, low_res = predictor.predict_torch(points, labels, mask_input=mask_input, multimask_output=False)
    torch.testing.assert_close(ours, low_res)
    assert (ours - without).abs().max() > 1e-3  # the mask prompt is not ignored


def _stamped_by_hand(low: torch.Tensor, clicks, image_size: int, radius: float, margin: float = 10.0) -> torch.Tensor:
    """The mask prompt with click disks, cell by cell: a cell whose centre lies within ``radius`` input pixels of a
    click's pixel centre is clamped to <= -margin (negative click) or >= +margin (positive), the last click winning."""
    out = low.clone()
    scale = low.shape[-1] / image_size
    for x, y, label in clicks:
        for row in range(low.shape[-2]):
            for col in range(low.shape[-1]):
                cx, cy = (col + 0.5) / scale, (row + 0.5) / scale  # the cell centre in input pixels
                if (cx - (x + 0.5)) ** 2 + (cy - (y + 0.5)) ** 2 <= radius ** 2:
                    out[0, row, col] = min(float(out[0, row, col]), -margin) if label == 0 \
                        else max(float(out[0, row, col]), margin)
    return out


@pytest.mark.parametrize("radius", [0.0, 6.0])
def test_protocol_channels_equal_plain_forwards_with_the_recomputed_clicks(tiny_model, radius) -> None:
    image, target = torch.rand(2, 3, 64, 64), _target()
    boxes = torch.tensor([[12.0, 10.0, 39.0, 29.0], [20.0, 30.0, 49.0, 59.0]])
    annotator = SimulatedAnnotator(clicks=3, click_radius=radius)
    with torch.no_grad():
        out = tiny_model(image, boxes, target=target, interaction=annotator)
        assert out.shape == (2, 4, 64, 64)
        torch.testing.assert_close(out[:, :1], tiny_model(image, boxes))
        sam = tiny_model.model
        embeddings = sam.encode_image(image)
        clicks = [[], []]
        previous_low = None
        prediction = [np.zeros((64, 64), bool)] * 2
        for k in range(1, 4):  # the protocol re-done by hand, sample by sample
            for i in range(2):
                click = centre_click(prediction[i], target[i, 0].numpy() > 0.5)
                clicks[i].append(click)
            lows = []
            for i in range(2):
                prompt = None if previous_low is None else previous_low[i:i + 1]
                tokens = clicks[i]
                if prompt is not None and radius:  # the clicks so far written into the fed-back mask
                    prompt = _stamped_by_hand(prompt[0], clicks[i], 64, radius)[None]
                    assert (prompt != previous_low[i:i + 1]).any()
                    tokens = [c for c in clicks[i] if c[2] == 1]  # a negative click is its disk alone
                pts = torch.tensor([[[c[0], c[1]] for c in tokens]])
                labs = torch.tensor([[float(c[2]) for c in tokens]])
                lows.append(sam.decode(embeddings[i:i + 1], None, pts, labs, prompt))
            previous_low = torch.cat(lows)
            logits = sam.upscale(previous_low, (64, 64))
            torch.testing.assert_close(out[:, k:k + 1], logits)
            prediction = [logits[i, 0].numpy() > 0 for i in range(2)]


def test_a_negative_click_on_settled_background_is_its_disk_alone(tiny_model) -> None:
    """settled_negative: a negative click where the previous round already predicts background (an annotator's
    "not here") goes to the decoder as its disk in the mask prompt only; a negative click in a false positive (what
    the protocol and training place), a positive click, the first round and a run without disks keep it a token."""
    sam = tiny_model.model
    previous = torch.full((1, 1, 16, 16), -3.0)
    previous[0, 0, 2:8, 2:8] = 4.0  # predicted foreground: input pixels 8..31 (scale 16 / 64)
    inside, outside = (20.0, 18.0, 0), (45.0, 50.0, 0)
    assert settled_negative(outside, previous, 64, 5.0)
    assert not settled_negative(inside, previous, 64, 5.0)  # a correction of a false positive
    assert not settled_negative((45.0, 50.0, 1), previous, 64, 5.0)
    assert not settled_negative(outside, None, 64, 5.0) and not settled_negative(outside, previous, 64, 0.0)
    clicks = [(12.0, 12.0, 1), outside]
    with torch.no_grad():
        embeddings = sam.encode_image(torch.rand(1, 3, 64, 64))
        ours = decode_clicks(sam, embeddings, None, [clicks], previous, click_radius=6.0, tokens=[clicks[:1]])
        expected = sam.decode(embeddings, None, torch.tensor([[[12.0, 12.0]]]), torch.tensor([[1.0]]),
                              _stamped_by_hand(previous[0], clicks, 64, 6.0)[None])
        torch.testing.assert_close(ours, expected)
        as_token = decode_clicks(sam, embeddings, None, [clicks], previous, click_radius=6.0)  # tokens: all clicks
        assert (as_token - ours).abs().max() > 1e-4


def test_training_step_trains_the_last_round_from_box_or_clicks_consistent_with_the_target(tiny_model) -> None:
    image, target = torch.rand(2, 3, 64, 64), _target()
    boxes = torch.tensor([[12.0, 10.0, 39.0, 29.0], [20.0, 30.0, 49.0, 59.0]])
    tiny_model.train()
    try:
        # box only, no corrections: exactly the box forward
        out = tiny_model(image, boxes, target=target, interaction=SimulatedAnnotator(1.0, max_corrections=0))
        torch.testing.assert_close(out, tiny_model(image, boxes))
        annotator = SimulatedAnnotator(0.0, max_corrections=6, seed=3)
        counts = set()
        for _ in range(6):
            out = tiny_model(image, boxes, target=target, interaction=annotator)
            out.mean().backward()
            assert annotator.last_rounds <= 6
            for i, sample in enumerate(annotator.last_clicks):
                assert sample[0][2] == 1 and target[i, 0, int(sample[0][1]), int(sample[0][0])] == 1
                for x, y, label in sample:  # corrections: positive exactly on the object, negative off it
                    assert label == int(target[i, 0, int(y), int(x)])
                counts.add(len(sample))
        assert len(counts) > 1  # the number of correction rounds varies between steps
        trainable = [p for p in tiny_model.parameters() if p.requires_grad]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    finally:
        tiny_model.eval()
        tiny_model.zero_grad(set_to_none=True)


def test_background_clicks_are_off_the_target_half_of_them_in_the_band_around_it() -> None:
    from scipy.ndimage import distance_transform_edt

    target = np.zeros((64, 64), bool)
    target[20:36, 20:36] = True  # 256 pixels: band width 8
    content = np.zeros((64, 64), bool)
    content[:, :56] = True
    distance = distance_transform_edt(~target)
    rng = np.random.RandomState(0)
    clicks = [background_click(target, content, rng) for _ in range(400)]
    assert all(label == 0 and not target[int(y), int(x)] for x, y, label in clicks)
    assert all(content[int(y), int(x)] for x, y, _ in clicks)
    near = np.mean([distance[int(y), int(x)] <= 8 for x, y, _ in clicks])
    # half from the band, the other half uniform over the content (of which the band is 704 / 3328 pixels)
    assert 0.5 + 0.5 * 704 / 3328 - 0.08 < near < 0.5 + 0.5 * 704 / 3328 + 0.08
    assert background_click(np.ones((8, 8), bool), np.ones((8, 8), bool), rng) is None


def test_negative_clicks_join_the_first_prompt_and_are_decoded_with_it(tiny_model) -> None:
    """negative_clicks: 0..n background clicks after each sample's first prompt (box or click), none on the target or
    in the padding; the last round's output equals a plain decode of the recorded prompts."""
    image, target = torch.rand(2, 3, 64, 64), _target()
    image[:, :, :, 56:] = 0.0  # padding: the content is columns 0..55
    boxes = torch.tensor([[12.0, 10.0, 39.0, 29.0], [20.0, 30.0, 49.0, 59.0]])
    annotator = SimulatedAnnotator(0.5, max_corrections=0, seed=2, negative_clicks=3)
    tiny_model.train()
    counts = set()
    try:
        for _ in range(8):
            out = tiny_model(image, boxes, target=target, interaction=annotator)
            for i, sample in enumerate(annotator.last_clicks):
                started_from_click = bool(sample) and sample[0][2] == 1
                negatives = sample[1:] if started_from_click else sample
                assert all(label == 0 and target[i, 0, int(y), int(x)] == 0 and x < 56 for x, y, label in negatives)
                counts.add(len(negatives))
            # no correction round: the output is the decode of exactly these prompts (box where no click started)
            sam = tiny_model.model
            with torch.no_grad():
                for i, sample in enumerate(annotator.last_clicks):
                    box = None if sample and sample[0][2] == 1 else boxes[i:i + 1]
                    pts = torch.tensor([[c[:2] for c in sample]]) if sample else None
                    labs = torch.tensor([[float(c[2]) for c in sample]]) if sample else None
                    expected = sam.upscale(sam.decode(sam.encode_image(image[i:i + 1]), box, pts, labs), (64, 64))
                    torch.testing.assert_close(out[i:i + 1].detach(), expected, atol=1e-4, rtol=1e-4)
        assert counts == {0, 1, 2, 3}
    finally:
        tiny_model.eval()
        tiny_model.zero_grad(set_to_none=True)


def test_supervising_every_round_adds_the_mean_dice_bce_of_the_earlier_rounds(tiny_model) -> None:
    """supervise_every_round: the pending (auxiliary) loss is the mean Dice + BCE of each correction round's prediction
    before the last, recomputed here from plain decodes of the recorded clicks, each fed the previous round's mask;
    without it nothing is pending."""
    image, target = torch.rand(2, 3, 64, 64), _target()
    tiny_model.train()
    try:
        plain = SimulatedAnnotator(0.0, max_corrections=3, seed=5)
        tiny_model(image, target=target, interaction=plain)
        assert float(tiny_model.aux_loss()) == 0.0
        annotator = SimulatedAnnotator(0.0, max_corrections=3, seed=5, supervise_every_round=True)
        while True:
            tiny_model(image, target=target, interaction=annotator)
            aux = tiny_model.aux_loss()
            if annotator.last_rounds >= 2:
                break
        clicks, rounds = annotator.last_clicks, annotator.last_rounds
        assert all(len(c) == rounds + 1 for c in clicks)
        sam = tiny_model.model
        with torch.no_grad():
            embeddings = sam.encode_image(image)
            mask, losses = None, []
            for r in range(rounds):
                coords = torch.tensor([[click[:2] for click in c[: r + 1]] for c in clicks])
                labels = torch.tensor([[float(click[2]) for click in c[: r + 1]] for c in clicks])
                low_res = sam.decode(embeddings, None, coords, labels, mask)
                logits, t = sam.upscale(low_res, (64, 64)), target
                prob = torch.sigmoid(logits)
                dice = 1 - (2 * (prob * t).flatten(1).sum(1) + 1) / ((prob + t).flatten(1).sum(1) + 1)
                bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(1).mean(1)
                losses.append(float((dice + bce).mean()))
                mask = low_res
        assert float(aux.detach()) == pytest.approx(float(np.mean(losses)), rel=1e-4)
        aux.backward()
        decoder = [p for p in sam.mask_decoder.parameters() if p.requires_grad]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder)
    finally:
        tiny_model.eval()
        tiny_model.zero_grad(set_to_none=True)


def test_number_of_clicks_metric_matches_numpy() -> None:
    rng = np.random.RandomState(0)
    label = rng.rand(6, 1, 16, 16) > 0.6
    pred = np.stack([label[:, 0] ^ (rng.rand(6, 16, 16) > q) for q in (0.5, 0.5, 0.7, 0.9, 0.97, 0.995)], 1)

    def dice(a, b):
        return 2 * (a & b).sum() / max(1, a.sum() + b.sum())

    for threshold in (0.85, 0.9):
        expected = []
        for i in range(6):
            reached = [k for k in range(1, 6) if dice(pred[i, k], label[i, 0]) >= threshold]
            expected.append(reached[0] if reached else 5)
        metric = NumberOfClicksMetric(threshold)
        metric(y_pred=torch.as_tensor(pred).float(), y=torch.as_tensor(label).float())
        assert metric.aggregate().item() == pytest.approx(np.mean(expected))
        assert 1 < np.mean(expected) < 5  # both reached and capped images are in the sample


def test_multimask_training_trains_the_min_loss_mask_and_fits_the_iou_head() -> None:
    """A lone first click (SAM's ambiguous prompt): the pending loss the tuner's aux_loss returns is the lowest
    Dice + BCE of the three multimask masks plus the IoU head's MSE against each mask's real IoU, recomputed here from
    a plain multimask decode; its gradient reaches the IoU head. The step's output stays mask token 0's."""
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", None, "lora", image_size=64, mask_tokens=None,
                            tuner_options={"trainable_modules": ["mask_decoder"], "frozen_modules": []}).train()
    image, target = torch.rand(2, 3, 64, 64), _target()
    annotator = SimulatedAnnotator(box_probability=0.0, max_corrections=0, multimask=True, seed=3)
    output = model(image, interaction=annotator, target=target)
    sam = model.model
    clicks = annotator.last_clicks
    assert [len(c) for c in clicks] == [1, 1] and annotator.last_rounds == 0
    with torch.no_grad():
        embeddings = sam.encode_image(image)
        coords = torch.tensor([[c[0][:2]] for c in clicks])
        labels = torch.tensor([[float(c[0][2])] for c in clicks])
        low_res, predicted = sam.decode_multimask(embeddings, coords, labels)
        candidates = sam.upscale(low_res, (64, 64))
        single = sam.upscale(sam.decode(embeddings, None, coords, labels), (64, 64))
    assert torch.allclose(output.detach(), single, atol=1e-5)
    best = []
    for i in range(2):
        losses = []
        for k in range(3):
            p, t = torch.sigmoid(candidates[i, k]), target[i, 0]
            dice = 1 - (2 * (p * t).sum() + 1) / ((p + t).sum() + 1)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(candidates[i, k], t)
            losses.append(float(dice + bce))
        best.append(min(losses))
    binary = candidates > 0
    truth = target.bool().expand_as(binary)
    iou = (binary & truth).flatten(2).sum(-1) / (binary | truth).flatten(2).sum(-1).clamp_min(1)
    expected = ((predicted - iou) ** 2).mean() + float(np.mean(best))
    aux = model.aux_loss()
    assert float(aux.detach()) == pytest.approx(float(expected), rel=1e-4)
    aux.backward()
    head = sam.mask_decoder.iou_prediction_head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert float(model.aux_loss()) == 0.0  # read once


def test_multimask_protocol_takes_the_most_confident_mask_for_the_first_click(tiny_model) -> None:
    image, target = torch.rand(2, 3, 64, 64), _target()
    boxes = torch.tensor([[12.0, 10.0, 40.0, 30.0], [20.0, 30.0, 50.0, 60.0]])
    annotator = SimulatedAnnotator(clicks=2, multimask=True)
    with torch.no_grad():
        output = tiny_model(image, boxes, interaction=annotator, target=target)
        sam = tiny_model.model
        embeddings = sam.encode_image(image)
        first = [centre_click(np.zeros((64, 64), bool), t[0].numpy() > 0.5) for t in target]
        coords = torch.tensor([[c[:2]] for c in first])
        labels = torch.tensor([[float(c[2])] for c in first])
        low_res, predicted = sam.decode_multimask(embeddings, coords, labels)
        single = sam.decode(embeddings, None, coords, labels)  # mask token 0: where no multimask mask holds it
        chosen = []
        for i in range(2):  # the most confident mask among those holding the foreground click
            x, y = int(coords[i, 0, 0] * 16 / 64), int(coords[i, 0, 1] * 16 / 64)
            holding = [k for k in range(3) if low_res[i, k, y, x] > 0]
            chosen.append(low_res[i, max(holding, key=lambda k: float(predicted[i, k]))] if holding else single[i, 0])
        expected = sam.upscale(torch.stack(chosen)[:, None], (64, 64))
    assert torch.allclose(output[:, 1:2], expected, atol=1e-5)
    with pytest.raises(Exception, match="four mask tokens"):
        one = build_tuned_sam("vit_tiny", None, "lora", image_size=64, mask_tokens=1).eval()
        one(image, boxes, interaction=annotator, target=target)


# ---- several objects of one image: one encoder pass, hard negative clicks --------------------------------------------
def test_samples_of_one_image_share_one_encoder_pass_with_the_embedding_of_a_lone_pass(tiny_model) -> None:
    from medsam_peft.engines.interactive import encode_once, identical_images

    first, second = torch.rand(3, 64, 64), torch.rand(3, 64, 64)
    image = torch.stack([first, second, first.clone(), second.clone(), first.clone()])
    assert identical_images(image) == [0, 1, 0, 1, 0]
    calls = []
    handle = tiny_model.model.image_encoder.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            shared = encode_once(tiny_model.model, image, identical_images(image))
            alone = [tiny_model.model.encode_image(image[i : i + 1]) for i in range(5)]
    finally:
        handle.remove()
    assert calls[0] == 2  # the first call: the two distinct images only
    for i in range(5):
        torch.testing.assert_close(shared[i : i + 1], alone[i], atol=1e-5, rtol=1e-5)


def test_hard_negatives_click_other_objects_of_the_same_image_never_the_target(tiny_model) -> None:
    """hard_negatives: 0..n negative clicks on the targets of the batch's other samples of the same image (never on
    the sample's own target, never from another image); the output is the plain decode of the recorded prompts."""
    from medsam_peft.engines.interactive import other_object_click

    base = torch.rand(3, 64, 64)
    image = torch.stack([base, base.clone(), torch.rand(3, 64, 64)])  # samples 0 and 1: one image, two objects
    target = torch.zeros(3, 1, 64, 64)
    target[0, 0, 8:24, 8:30] = 1
    target[1, 0, 36:60, 30:56] = 1
    target[2, 0, 20:40, 20:40] = 1
    annotator = SimulatedAnnotator(0.0, max_corrections=0, seed=4, hard_negatives=2)
    tiny_model.train()
    counts = set()
    try:
        for _ in range(10):
            out = tiny_model(image, target=target, interaction=annotator)
            for i, sample in enumerate(annotator.last_clicks):
                assert sample[0][2] == 1 and target[i, 0, int(sample[0][1]), int(sample[0][0])] == 1
                negatives = sample[1:]
                other = 1 - i if i < 2 else None
                if other is None:
                    assert negatives == []  # alone in its image: no other object to click
                for x, y, label in negatives:
                    assert label == 0 and target[other, 0, int(y), int(x)] == 1 and target[i, 0, int(y), int(x)] == 0
                counts.add(len(negatives)) if other is not None else None
            sam = tiny_model.model
            with torch.no_grad():
                for i, sample in enumerate(annotator.last_clicks):
                    pts = torch.tensor([[c[:2] for c in sample]])
                    labs = torch.tensor([[float(c[2]) for c in sample]])
                    expected = sam.upscale(sam.decode(sam.encode_image(image[i : i + 1]), None, pts, labs), (64, 64))
                    torch.testing.assert_close(out[i : i + 1].detach(), expected, atol=1e-4, rtol=1e-4)
        assert counts == {0, 1, 2}
    finally:
        tiny_model.eval()
        tiny_model.zero_grad(set_to_none=True)
    # placement: the deepest pixel of the other object (the protocol's place for a click in a false positive)
    mine, theirs = target[0, 0].numpy() > 0, target[1, 0].numpy() > 0
    x, y, label = other_object_click(mine, [theirs], np.random.RandomState(0), centre=True)
    assert label == 0 and centre_click(theirs, np.zeros_like(theirs))[:2] == (x, y)
    assert other_object_click(mine, [mine], np.random.RandomState(0), centre=False) is None
