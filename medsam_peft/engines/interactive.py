"""A simulated annotator: SAM-style iterative prompting in training and the click protocol in evaluation.

Training (SAM paper §A.1, micro-sam's trainer): per sample the first prompt is the sample's box or one foreground
click, with equal probability by default; then a random number (0..``max_corrections``, one draw per batch) of
correction rounds, each decoded without gradients on the same image embedding: a new click drawn uniformly from the
error region of the previous prediction (SAM) or, with ``centre_probability``, at its centre as the protocol places
it (RITM's iterative training); a false-negative pixel is a positive click, a false-positive pixel a negative one;
the previous low-resolution logits are fed back as the dense mask prompt. The prediction after the
last round is the one the loss sees, so every prompt count from one click on is trained, at the cost of one encoder
pass and a few decoder passes per step.

Evaluation (the click protocol of RITM / SimpleClick / micro-sam): from an empty prediction, each click is placed
at the pixel of the current error region farthest from that region's boundary (the centre of the largest error,
by Euclidean distance transform); false negatives give a positive click, false positives a negative one, ties go to
the false negatives. Output channel 0 is the prediction from the sample's box alone, channel k (1..``clicks``) the
prediction after k clicks (no box), each fed the previous click's low-resolution logits. Metrics read one channel
(``round_output``) or all of them (``NumberOfClicks``: NoC@85 / NoC@90).

The annotator is passed to the network's ``forward`` (``interaction=``), so DDP and autocast see one forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatchExtraInput, default_prepare_batch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.transforms import Randomizable
from scipy.ndimage import distance_transform_edt

from medsam_peft.errors import ConfigError

Click = tuple[float, float, int]  # (x, y, label): column, row in the network's input frame; 1 = fg, 0 = bg


def centre_click(prediction: np.ndarray, target: np.ndarray) -> Click | None:
    """The protocol's next click for a binary ``prediction`` against ``target`` ((H, W) bool arrays): at the pixel
    of the false-negative or false-positive region farthest from its boundary, whichever lies deeper (false
    negatives on ties). None when the prediction is exact."""
    false_negative, false_positive = target & ~prediction, prediction & ~target
    best: Click | None = None
    depth = 0.0
    for region, label in ((false_negative, 1), (false_positive, 0)):
        if not region.any():
            continue
        # Padding with background makes the image border a boundary too, as the annotator sees it.
        distance = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
        if distance[row, col] > depth:
            best, depth = (float(col), float(row), label), float(distance[row, col])
    return best


def random_error_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.RandomState) -> Click | None:
    """A training correction: a pixel drawn uniformly from the error region (SAM's sampling), positive where the
    target is foreground. None when the prediction is exact."""
    rows, cols = np.nonzero(prediction != target)
    if rows.size == 0:
        return None
    i = rng.randint(rows.size)
    return float(cols[i]), float(rows[i]), int(target[rows[i], cols[i]])


def random_foreground_click(target: np.ndarray, rng: np.random.RandomState) -> Click | None:
    rows, cols = np.nonzero(target)
    if rows.size == 0:
        return None
    i = rng.randint(rows.size)
    return float(cols[i]), float(rows[i]), 1


def background_click(target: np.ndarray, content: np.ndarray, rng: np.random.RandomState) -> Click | None:
    """A negative click in ``content`` ((H, W) bool, the image's non-padding pixels) off ``target``: with equal chance
    in the band around the target (within max(2, sqrt(area) / 2) pixels) or anywhere; None when there is no such
    pixel."""
    outside = ~target & content
    if target.any() and rng.rand() < 0.5:
        width = max(2.0, 0.5 * float(np.sqrt(target.sum())))
        outside = outside & (distance_transform_edt(~target) <= width)
    rows, cols = np.nonzero(outside)
    if rows.size == 0:
        return None
    i = rng.randint(rows.size)
    return float(cols[i]), float(rows[i]), 0


def identical_images(image: torch.Tensor) -> list[int]:
    """For each image of a (B, ...) batch, the index of the first image in the batch equal to it (itself when
    unique): samples of one image with different targets (SAM trains several masks per image)."""
    owners: list[int] = []
    for i in range(image.shape[0]):
        owners.append(next((j for j in sorted(set(owners)) if torch.equal(image[i], image[j])), i))
    return owners


def encode_once(model: torch.nn.Module, image: torch.Tensor, owners: Sequence[int]) -> torch.Tensor:
    """``model.encode_image`` run once per distinct image of the batch, each sample given its image's embedding."""
    distinct = sorted(set(owners))
    if len(distinct) == len(owners):
        return model.encode_image(image)
    embeddings = model.encode_image(image[distinct])
    return embeddings[[distinct.index(owner) for owner in owners]]


def other_object_click(target: np.ndarray, others: Sequence[np.ndarray], rng: np.random.RandomState,
                       centre: bool) -> Click | None:
    """A negative click on one of ``others`` (the targets of other samples of the same image), off ``target``: at
    the object's deepest pixel (``centre``, as the protocol places a click in a false positive) or uniformly in it;
    None when no other object lies off the target."""
    regions = [other & ~target for other in others]
    regions = [region for region in regions if region.any()]
    if not regions:
        return None
    region = regions[rng.randint(len(regions))]
    if centre:
        distance = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    else:
        rows, cols = np.nonzero(region)
        i = rng.randint(rows.size)
        row, col = rows[i], cols[i]
    return float(col), float(row), 0


def stamp_clicks(low_res: torch.Tensor, clicks: Sequence[Sequence[Click]], image_size: int, radius: float,
                 margin: float = 10.0) -> torch.Tensor:
    """The (B, 1, s, s) low-resolution logits fed back as SAM's dense mask prompt with each click written into them
    as a disk of ``radius`` input pixels (RITM's click maps, carried by SAM's mask channel): at most -``margin``
    around a negative click, at least +``margin`` around a positive one, later clicks over earlier ones."""
    if radius <= 0:
        return low_res
    out = low_res.clone()
    h, w = out.shape[-2:]
    scale = w / float(image_size)
    rows = torch.arange(h, device=out.device, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(w, device=out.device, dtype=torch.float32)[None, :] + 0.5
    for i, sample in enumerate(clicks):
        for x, y, label in sample:
            disk = ((cols - (x + 0.5) * scale) ** 2 + (rows - (y + 0.5) * scale) ** 2) <= (radius * scale) ** 2
            plane = out[i, 0]
            out[i, 0] = torch.where(disk, plane.clamp(max=-margin) if label == 0 else plane.clamp(min=margin), plane)
    return out


def settled_negative(click: Click, previous: torch.Tensor | None, image_size: int, click_radius: float) -> bool:
    """Whether a new click is a negative one on a pixel the previous round (``previous``, (1, 1, s, s) logits)
    already calls background: it corrects nothing, so with click disks (``click_radius`` > 0) it is carried by its disk
    in the mask prompt alone, not as a point token. The click protocol and training never place such a click (their
    negative clicks sit in false positives); an annotator does ("not here", away from the object), and LiteMedSAM's
    point embeddings (MedSAM's box-only training, distilled) read a negative token far from the object as a
    positive one: on the demo's held-out slices one background click at the content pixel farthest from the target,
    added to a centre click, took the mean Dice from 0.646 to 0.493 as a token and to 0.672 as a disk only."""
    if click[2] != 0 or previous is None or click_radius <= 0:
        return False
    h, w = previous.shape[-2:]
    scale = w / float(image_size)
    row = min(h - 1, max(0, int((click[1] + 0.5) * scale)))
    col = min(w - 1, max(0, int((click[0] + 0.5) * scale)))
    return bool(previous[0, 0, row, col] <= 0)


def decode_clicks(model: torch.nn.Module, embeddings: torch.Tensor, boxes: torch.Tensor | None,
                  clicks: Sequence[Sequence[Click]], previous: torch.Tensor | None, *, multimask: bool = False,
                  click_radius: float = 0.0, tokens: Sequence[Sequence[Click]] | None = None) -> torch.Tensor:
    """One round of the click protocol, as the evaluation and the label server run it: low-resolution logits
    (B, 1, s, s) for the clicks so far (with ``boxes`` where given) and ``previous``, the last round's logits, as
    the mask prompt with the clicks written into it (``stamp_clicks``). A first click without box or previous mask
    is SAM's ambiguous case: with ``multimask`` the most confident of its three masks answers it. ``tokens``: the
    clicks given as point tokens where not all are (``settled_negative``)."""
    image_size = int(model.image_size)
    mask_inputs = None if previous is None else stamp_clicks(previous, clicks, image_size, click_radius)
    coords, labels = pack_clicks(clicks if tokens is None else tokens, embeddings.device)
    low_res = model.decode(embeddings, boxes, coords, labels, mask_inputs)
    if multimask and previous is None and boxes is None and coords is not None:
        low_res = model.decode_lone_click(embeddings, coords, labels, low_res)
    return low_res


def pack_clicks(clicks: Sequence[Sequence[Click]], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-sample click lists as SAM's (B, N, 2) coordinates and (B, N) labels, padded with label -1 (dropped by
    ``PromptableSam``); (None, None) when no sample has a click."""
    most = max((len(c) for c in clicks), default=0)
    if most == 0:
        return None, None
    coords = torch.zeros(len(clicks), most, 2)
    labels = torch.full((len(clicks), most), -1.0)
    for i, sample in enumerate(clicks):
        for j, (x, y, label) in enumerate(sample):
            coords[i, j, 0], coords[i, j, 1], labels[i, j] = x, y, label
    return coords.to(device), labels.to(device)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (smoothed by 1) + mean BCE of (B, C, H, W) logits against a broadcastable {0, 1} target: (B, C)."""
    target = target.expand_as(logits)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).flatten(2).sum(-1) + 1) / ((prob + target).flatten(2).sum(-1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    return dice + bce


def _masks(logits: torch.Tensor) -> list[np.ndarray]:
    return [plane for plane in (logits[:, 0] > 0).cpu().numpy()]


class SimulatedAnnotator(Randomizable):
    """Prompts a ``PromptableSam`` the way an annotator would (see the module docstring).

    Args:
        box_probability: chance that a training sample starts from its box rather than from one foreground click.
        max_corrections: most correction clicks per training step (SAM trains with 8 prompt rounds in all).
        clicks: clicks of the evaluation protocol (output channels 1..clicks); NoC is counted up to this number.
        mask_prompt: feed the previous round's low-resolution logits back as SAM's dense mask prompt.
        centre_probability: chance that a training correction is placed as the protocol places it (the centre of the
            deepest error) instead of uniformly in the error region: uniform clicks fall mostly on the thin error bands
            at the boundary, and a model trained only on them erased whole structures on the protocol's central
            negative clicks (measured: Dice of some images fell from 0.74 to 0.0 over five clicks).
        seed: seeds the training prompts (clicks, box-or-click draws, round counts).
        multimask: SAM's ambiguity-aware output for a lone first click: in training, for each sample that started
            from a click, the three masks of mask tokens 1..3 are decoded on that click and the one with the lowest
            Dice + BCE against the target is trained (SAM back-propagates its min-loss mask) as a term of the tuner's
            auxiliary loss, beside the step's own output (mask token 0, which keeps answering lone clicks where no
            multimask mask agrees with the click); the IoU head learns each mask's real IoU (MSE, weight
            ``iou_loss_weight``, auxiliary loss too). In the protocol and the label server the first click's mask is
            the most confident one that agrees with the click. Needs SAM's four mask tokens.
        iou_loss_weight: weight of the IoU head's MSE (SAM: 1).
        negative_clicks: most background clicks added to a training sample's first prompt (0..n drawn per
            sample; RITM's multi-point sampling): each lies, with equal chance, in a band around the target (as wide
            as half the square root of its area, at least 2 pixels) or anywhere off it in the image content (pixels
            that differ from the padding colour). A model trained only on corrections saw few negative clicks and
            answered them as positive ones (measured: the mask grew towards the click and left the target).
        supervise_every_round: also train the prediction of every correction round before the last (SAM and
            micro-sam supervise each iteration): those rounds decode with gradients and their mean Dice + BCE joins the
            auxiliary loss; the mask fed to the next round stays detached, as in SAM. Off: only the last round is
            trained, the others decode without gradients.
    """

    def __init__(self, box_probability: float = 0.5, max_corrections: int = 7, clicks: int = 5,
                 mask_prompt: bool = True, centre_probability: float = 0.5, seed: int | None = 0,
                 multimask: bool = False, iou_loss_weight: float = 1.0, supervise_every_round: bool = False,
                 negative_clicks: int = 0, hard_negatives: int = 0, click_radius: float = 0.0) -> None:
        if not 0.0 <= box_probability <= 1.0:
            raise ConfigError(f"box_probability must be in [0, 1], got {box_probability}")
        if max_corrections < 0 or clicks < 1:
            raise ConfigError(f"need max_corrections >= 0 and clicks >= 1, got {max_corrections} and {clicks}")
        self.box_probability = float(box_probability)
        self.max_corrections = int(max_corrections)
        self.clicks = int(clicks)
        self.mask_prompt = bool(mask_prompt)
        if not 0.0 <= centre_probability <= 1.0:
            raise ConfigError(f"centre_probability must be in [0, 1], got {centre_probability}")
        self.centre_probability = float(centre_probability)
        self.multimask = bool(multimask)
        self.iou_loss_weight = float(iou_loss_weight)
        self.supervise_every_round = bool(supervise_every_round)
        if negative_clicks < 0:
            raise ConfigError(f"negative_clicks must be >= 0, got {negative_clicks}")
        self.negative_clicks = int(negative_clicks)
        if hard_negatives < 0:
            raise ConfigError(f"hard_negatives must be >= 0, got {hard_negatives}")
        self.hard_negatives = int(hard_negatives)
        self.click_radius = float(click_radius)
        self.last_clicks: list[list[Click]] = []
        self.last_rounds = 0
        self.set_random_state(seed)

    def randomize(self, data: Any = None) -> None:  # draws happen in the step, from self.R
        pass

    def __call__(self, model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor, *,
                 boxes: torch.Tensor | None = None, points: torch.Tensor | None = None,
                 point_labels: torch.Tensor | None = None) -> torch.Tensor:
        targets = [plane for plane in (target[:, 0] > 0.5).cpu().numpy()]
        if model.training:
            return self.training_step(model, image, targets, boxes)
        return self.protocol(model, image, targets, boxes)

    # ---- training ---------------------------------------------------------------------------------------------
    def training_step(self, model, image: torch.Tensor, targets: list[np.ndarray],
                      boxes: torch.Tensor | None) -> torch.Tensor:
        owners = identical_images(image)
        embeddings = encode_once(model, image, owners)
        size = image.shape[-2:]
        clicks: list[list[Click]] = []
        use_box = []
        for i, tgt in enumerate(targets):
            first = None if boxes is not None and self.R.rand() < self.box_probability else random_foreground_click(tgt, self.R)
            # An empty target has no foreground to click: it keeps its box (the whole image for an empty mask).
            use_box.append(first is None and boxes is not None)
            clicks.append([first] if first is not None else [])
        if self.negative_clicks:
            content = ((image - image[:, :, -1:, -1:]).abs().amax(1) > 1e-3).cpu().numpy()  # not the pad colour
            for sample, tgt, inside in zip(clicks, targets, content):
                for _ in range(int(self.R.randint(0, self.negative_clicks + 1))):
                    click = background_click(tgt, inside, self.R)
                    if click is not None:
                        sample.append(click)
        if self.hard_negatives:
            for i, (sample, tgt) in enumerate(zip(clicks, targets)):
                others = [targets[j] for j in range(len(targets)) if j != i and owners[j] == owners[i]]
                for _ in range(int(self.R.randint(0, self.hard_negatives + 1)) if others else 0):
                    click = other_object_click(tgt, others, self.R, self.R.rand() < self.centre_probability)
                    if click is not None:
                        sample.append(click)
        box_prompts = None
        if boxes is not None and any(use_box):
            keep = torch.tensor(use_box, device=boxes.device).reshape(-1, *([1] * (boxes.ndim - 1)))
            box_prompts = torch.where(keep, boxes.float(), torch.full_like(boxes.float(), float("nan")))
        mask_inputs = None
        rounds = int(self.R.randint(0, self.max_corrections + 1))
        lone = [i for i, sample in enumerate(clicks) if not use_box[i] and len(sample) == 1]  # one click, nothing else
        # samples whose first prompt began with a foreground click (background clicks may follow it): their first click
        # alone trains the multimask masks, as the protocol's and the server's first click is decoded alone
        clicked_first = [i for i, sample in enumerate(clicks) if not use_box[i] and sample and sample[0][2] == 1]
        supervised = self.supervise_every_round and torch.is_grad_enabled()
        target = torch.as_tensor(np.stack(targets), device=image.device).float()[:, None]
        round_losses = []
        for round_index in range(rounds):
            with torch.set_grad_enabled(supervised):
                coords, labels = pack_clicks(clicks, image.device)
                low_res = model.decode(embeddings, box_prompts, coords, labels, mask_inputs)
                if supervised:
                    round_losses.append(dice_bce(model.upscale(low_res, size).float(), target).mean())
            with torch.no_grad():
                low_res = low_res.detach()
                if self.multimask and round_index == 0 and lone:
                    # as the protocol and the server answer a lone first click: the most confident of three masks,
                    # which the next round then gets as its mask prompt
                    index = torch.tensor(lone, device=image.device)
                    first, first_labels = pack_clicks([clicks[i][:1] for i in lone], image.device)
                    multi = model.decode_lone_click(embeddings[index], first, first_labels, low_res[index])
                    low_res = low_res.clone()
                    low_res[index] = multi.to(low_res.dtype)
                for sample, pred, tgt in zip(clicks, _masks(model.upscale(low_res, size)), targets):
                    centre = self.R.rand() < self.centre_probability
                    click = centre_click(pred, tgt) if centre else random_error_click(pred, tgt, self.R)
                    if click is not None:
                        sample.append(click)
                mask_inputs = stamp_clicks(low_res, clicks, image.shape[-1], self.click_radius) if self.mask_prompt \
                    else None
        self.last_clicks, self.last_rounds = clicks, rounds  # what the last step prompted, for inspection
        coords, labels = pack_clicks(clicks, image.device)
        logits = model.upscale(model.decode(embeddings, box_prompts, coords, labels, mask_inputs), size)
        pending = [torch.stack(round_losses).mean()] if round_losses else []
        if self.multimask and clicked_first:
            pending.append(self._train_multimask(model, embeddings, clicks, targets, clicked_first, size))
        if pending and hasattr(model, "pending_loss"):
            model.pending_loss = torch.stack(pending).sum()
        return logits

    def _train_multimask(self, model, embeddings, clicks, targets, lone, size) -> torch.Tensor:
        """The first click of the samples that started from one: its three masks decoded with gradients; returns the
        min-loss one's Dice + BCE plus the IoU head's MSE against each mask's IoU, for the model's pending loss (the
        step's output stays mask token 0's, so a lone click without a mask prompt keeps being trained there too)."""
        index = torch.tensor(lone, device=embeddings.device)
        coords, labels = pack_clicks([clicks[i][:1] for i in lone], embeddings.device)
        low_res, predicted_iou = model.decode_multimask(embeddings[index], coords, labels)
        candidates = model.upscale(low_res, size).float()  # (L, 3, S, S)
        target = torch.as_tensor(np.stack([targets[i] for i in lone]), device=candidates.device).float()[:, None]
        target = target.expand_as(candidates)
        losses = dice_bce(candidates, target)  # (L, 3)
        best = losses.detach().argmin(1)
        rows = torch.arange(len(lone), device=candidates.device)
        with torch.no_grad():
            binary, truth = candidates > 0, target > 0.5
            iou = (binary & truth).flatten(2).sum(-1) / (binary | truth).flatten(2).sum(-1).clamp_min(1)
        return self.iou_loss_weight * F.mse_loss(predicted_iou.float(), iou) + losses[rows, best].mean()

    # ---- evaluation -------------------------------------------------------------------------------------------
    def protocol(self, model, image: torch.Tensor, targets: list[np.ndarray],
                 boxes: torch.Tensor | None) -> torch.Tensor:
        """(B, 1 + clicks, S, S) logits: the box prediction, then the prediction after each click."""
        if boxes is None:
            raise ConfigError("the click protocol scores the box prompt in channel 0: use prepare_batch "
                              "%configs/prompts.json::interactive, which feeds each sample's 'box'")
        embeddings = encode_once(model, image, identical_images(image))
        size = image.shape[-2:]
        outputs = [model.upscale(model.decode(embeddings, boxes), size)]
        clicks: list[list[Click]] = [[] for _ in targets]
        predictions = [np.zeros_like(t) for t in targets]
        previous = None
        for _ in range(self.clicks):
            for sample, pred, tgt in zip(clicks, predictions, targets):
                click = centre_click(pred, tgt)
                if click is not None:
                    sample.append(click)
            low_res = decode_clicks(model, embeddings, None, clicks, previous, multimask=self.multimask,
                                    click_radius=self.click_radius)
            logits = model.upscale(low_res, size)
            outputs.append(logits)
            predictions = _masks(logits)
            previous = low_res if self.mask_prompt else None
        return torch.cat(outputs, dim=1)


class InteractivePrepareBatch(PrepareBatchExtraInput):
    """``prepare_batch`` for interactive training and evaluation: the network gets each sample's ``box`` and
    ``label`` (as ``target``) and the ``annotator`` that prompts it."""

    def __init__(self, annotator: SimulatedAnnotator, box_key: str = "box") -> None:
        super().__init__({"boxes": box_key})
        self.annotator = annotator

    def __call__(self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, label, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        return image, label, args, {**extra, "target": label, "interaction": self.annotator}


def round_output(channel: int) -> Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """``output_transform`` giving a metric one channel of the protocol's output: 0 = box, k = after k clicks."""

    def transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        items = output if isinstance(output, list) else [output]
        return [item["pred"][channel : channel + 1] for item in items], [item["label"] for item in items]

    return transform


def dice_per_round(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(B, R, H, W) binary predictions vs (B, 1, H, W) labels -> (B, R) Dice; 1 where both are empty."""
    pred, lab = prediction.float().flatten(2), label.float().flatten(2)
    intersection = (pred * lab).sum(-1)
    total = pred.sum(-1) + lab.sum(-1)
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1e-12), torch.ones_like(total))


class NumberOfClicksMetric(CumulativeIterationMetric):
    """NoC@threshold: clicks until the Dice reaches ``threshold`` (channels 1.. of the protocol output), the
    protocol's click count where it never does; averaged over images."""

    def __init__(self, threshold: float = 0.9) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None or y_pred.shape[1] < 2:
            raise ValueError("NoC needs the click protocol's output (box + clicks channels) and the label")
        reached = dice_per_round(y_pred[:, 1:], y) >= self.threshold
        clicks = y_pred.shape[1] - 1
        first = torch.where(reached.any(1), reached.float().argmax(1) + 1, torch.full_like(reached[:, 0], clicks,
                                                                                           dtype=torch.long))
        return first.float()[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        values = self.get_buffer()
        return values.float().mean()


class NumberOfClicks(IgniteMetricHandler):
    """Ignite handler for ``NumberOfClicksMetric`` (gathers over DDP ranks like MONAI's own handlers)."""

    def __init__(self, threshold: float = 0.9, output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        super().__init__(metric_fn=NumberOfClicksMetric(threshold), output_transform=output_transform,
                         save_details=save_details)


def interactive_metrics(clicks: int = 5, key: str | None = None) -> dict[str, Any]:
    """Validation metrics of the click protocol: box Dice, Dice after 1, 3, 5 ... clicks, NoC@85 and NoC@90.
    ``key`` names one of them to leave out (it is the bundle's key metric)."""
    from monai.handlers import MeanDice, from_engine

    metrics: dict[str, Any] = {"val_box_dice": MeanDice(include_background=True, output_transform=round_output(0))}
    for k in sorted({1, 3, 5, clicks} & set(range(1, clicks + 1))):
        metrics[f"val_dice_click{k}"] = MeanDice(include_background=True, output_transform=round_output(k))
    for percent in (85, 90):
        metrics[f"val_noc{percent}"] = NumberOfClicks(percent / 100, output_transform=from_engine(["pred", "label"]))
    if key is not None:
        if key not in metrics:
            raise ConfigError(f"key_metric {key!r} is not a click-protocol metric; choose one of {sorted(metrics)}")
        metrics.pop(key)
    return metrics


def interactive_key_metric(name: str, clicks: int = 5) -> dict[str, Any]:
    """The click-protocol metric called ``name`` as a ``key_val_metric`` dict."""
    metrics = interactive_metrics(clicks)
    if name not in metrics:
        raise ConfigError(f"key_metric {name!r} is not a click-protocol metric; choose one of {sorted(metrics)}")
    return {name: metrics[name]}


__all__ = ["InteractivePrepareBatch", "NumberOfClicks", "NumberOfClicksMetric", "SimulatedAnnotator",
           "background_click", "centre_click", "decode_clicks", "dice_per_round", "encode_once", "identical_images",
           "interactive_key_metric", "interactive_metrics", "other_object_click", "pack_clicks",
           "random_error_click", "round_output", "settled_negative", "stamp_clicks"]
