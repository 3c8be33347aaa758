"""A trainable, batched SAM forward on top of the official ``segment_anything`` modules.

``segment_anything.modeling.Sam.forward`` runs under ``torch.no_grad`` and takes a list of per-image dicts, and its
mask decoder repeats the image embedding once per prompt (it assumes one image per call). ``PromptableSam`` keeps
the official modules untouched and calls them image by image with gradients enabled.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.errors import ConfigError
from medsam_peft.models.embedding_cache import TrunkEmbeddingCache, vit_neck, vit_trunk
from medsam_peft.transforms.semantic.array import query_probabilities
from medsam_peft.utils.graph_capture import graph_capture

# SAM's pixel statistics are given on the 0-255 scale; our inputs are in [0, 1].
_IMAGENET_MEAN = (123.675 / 255.0, 116.28 / 255.0, 103.53 / 255.0)
_IMAGENET_STD = (58.395 / 255.0, 57.12 / 255.0, 57.375 / 255.0)
PIXEL_NORMALIZATIONS = ("imagenet", "unit")
# How the multi-class decoder's queries start (set_semantic_queries). "token0" is the Conv-LoRA reference.
QUERY_INITS = ("class", "perturbed", "token0")
DEFAULT_QUERY_INIT = "class"


SEMANTIC_OUTPUTS = ("queries", "probabilities")


class PromptableSam(nn.Module):
    """SAM image encoder + prompt encoder + mask decoder with a differentiable batched forward.

    Args:
        image_encoder: ``ImageEncoderViT`` or LiteMedSAM's ``TinyViT``; maps (B, 3, S, S) to (B, C, S/16, S/16).
        prompt_encoder: the official ``PromptEncoder``.
        mask_decoder: the official ``MaskDecoder``.
        pixel_normalization: ``"imagenet"`` applies SAM's mean/std to [0, 1] inputs; ``"unit"`` feeds [0, 1] inputs
            unchanged (LiteMedSAM's preprocessing).
        backbone: registry name, recorded in adapter files.

    Inputs to ``forward`` are images already resized and padded to ``image_size`` (see
    ``medsam_peft.transforms``), with intensities in [0, 1], and prompts in that pixel frame (x, y order).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        pixel_normalization: str = "imagenet",
        backbone: str = "custom",
    ) -> None:
        super().__init__()
        if pixel_normalization not in PIXEL_NORMALIZATIONS:
            raise ValueError(f"pixel_normalization must be one of {PIXEL_NORMALIZATIONS}, got {pixel_normalization!r}")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.pixel_normalization = pixel_normalization
        self.backbone = backbone
        self.register_buffer("pixel_mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Set by ``enable_trunk_cache`` (through ``TunedSam.enable_trunk_cache``, which knows what its tuner adapts).
        self.trunk_cache: TrunkEmbeddingCache | None = None
        self.trunk_cache_split: str | None = None
        # A loss term computed inside a forward (the IoU head's MSE in multimask training), added to the tuner's
        # auxiliary loss and cleared when read (``take_pending_loss``).
        self.pending_loss: torch.Tensor | None = None
        # What the multi-class decoder's forward returns (``SEMANTIC_OUTPUTS``): the queries for training and the
        # engines' post-processing, or the per-class probabilities as one tensor for MONAI's bundle tools
        # (verify_net_in_out, ckpt_export) and traced graphs, which need a tensor output.
        self.semantic_output = "queries"

    def take_pending_loss(self) -> torch.Tensor | None:
        loss, self.pending_loss = self.pending_loss, None
        return loss

    def enable_trunk_cache(self, cache: TrunkEmbeddingCache, split: str) -> TrunkEmbeddingCache:
        """Serve the frozen part of the image encoder from ``cache``: ``split="encoder"`` (all of it is frozen) or
        ``"neck"`` (a ViT trunk frozen, its neck still runs and may train)."""
        if split not in ("encoder", "neck"):
            raise ValueError(f"trunk cache split must be 'encoder' or 'neck', got {split!r}")
        cache.bind(self.image_encoder, split)
        self.trunk_cache, self.trunk_cache_split = cache, split
        return cache

    def disable_trunk_cache(self) -> None:
        self.trunk_cache = self.trunk_cache_split = None

    @property
    def image_size(self) -> int:
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def num_mask_tokens(self) -> int:
        return int(self.mask_decoder.num_mask_tokens)

    @property
    def num_classes(self) -> int | None:
        """Classes (background included) of the multi-class decoder; None for SAM's mask decoder."""
        head = getattr(self.mask_decoder, "output_classifier", None)
        return None if head is None else int(head.out_features) - 1

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if self.pixel_normalization == "imagenet":
            return (image - self.pixel_mean) / self.pixel_std
        return image

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] -> (B, C, S/16, S/16) embeddings."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(image.shape)}")
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} for this model, got "
                f"{tuple(image.shape[-2:])}; resize/pad them first (medsam_peft.transforms.ResizeLongestSide)"
            )
        image = self.normalize(image)
        if self.trunk_cache is None:
            return self.image_encoder(image)
        encoder = self.image_encoder
        if self.trunk_cache_split == "neck":  # frozen ViT trunk cached, the (trained) neck runs every time
            return vit_neck(encoder, self.trunk_cache.lookup_or_compute(image, lambda x: vit_trunk(encoder, x)))
        return self.trunk_cache.lookup_or_compute(image, encoder)

    def _prompt_embeddings(
        self,
        index: int,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse/dense prompt embeddings for image ``index``; no prompt gives Conv-LoRA's prompt-free mode.

        Per image of a batch, a box row of NaNs means "no box" and points labelled -1 are padding (SAM's label for
        "not a point"): both are dropped, so that samples with different prompts batch and each image is decoded
        exactly as if it had been sent alone.
        """
        encoder = self.prompt_encoder
        box = None
        if boxes is not None:
            box = boxes[index].reshape(-1, 4).to(torch.float32)
            if not graph_capture():  # an exported graph takes finite boxes: no data-dependent row filter
                box = box[torch.isfinite(box).all(dim=1)]
                box = box if box.shape[0] else None
        point_prompt = None
        if points is not None:
            if point_labels is None:
                raise ValueError("points were given without point_labels (1 = foreground, 0 = background)")
            coords = points[index].reshape(-1, 2).to(torch.float32)
            labels = point_labels[index].reshape(-1).to(torch.float32)
            keep = labels >= 0
            if bool(keep.any()):
                coords, labels = coords[keep][None], labels[keep][None]
                if box is not None and box.shape[0] != 1:
                    coords, labels = coords.expand(box.shape[0], -1, -1), labels.expand(box.shape[0], -1)
                point_prompt = (coords, labels)
        mask = None if mask_inputs is None else mask_inputs[index : index + 1].to(torch.float32)
        if box is None and point_prompt is None and mask is None:
            # Prompt-free: no sparse tokens, dense embedding = no_mask_embed (as the Conv-LoRA reference).
            h, w = encoder.image_embedding_size
            weight = encoder.no_mask_embed.weight
            sparse = weight.new_zeros(1, 0, weight.shape[1])
            dense = weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
            return sparse, dense
        if mask is not None and box is not None and box.shape[0] != 1:
            mask = mask.expand(box.shape[0], -1, -1, -1)
        return encoder(points=point_prompt, boxes=box, masks=mask)

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-resolution mask logits (B, M, S/4, S/4); M = number of boxes per image (1 without boxes).

        ``mask_inputs``: (B, 1, S/4, S/4) logits of an earlier prediction (SAM's dense mask prompt, as interactive
        refinement feeds back the previous click's low-resolution output).
        """
        image_pe = self.prompt_encoder.get_dense_pe()
        masks = []
        for i in range(embeddings.shape[0]):
            sparse, dense = self._prompt_embeddings(i, boxes, points, point_labels, mask_inputs)
            low_res, _ = self.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks.append(low_res.reshape(1, -1, *low_res.shape[-2:]))
        return torch.cat(masks, dim=0)

    def decode_multimask(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor,
        point_labels: torch.Tensor,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's ambiguity-aware output for an ambiguous prompt (one click): low-resolution logits (B, 3, S/4, S/4)
        of mask tokens 1..3 and the IoU head's predicted IoU of each (B, 3), which picks one at inference."""
        if self.mask_decoder.num_mask_tokens != 4:
            raise ConfigError(f"multimask output needs SAM's four mask tokens; this decoder has "
                              f"{self.mask_decoder.num_mask_tokens} (build it with mask_tokens null)")
        image_pe = self.prompt_encoder.get_dense_pe()
        masks, scores = [], []
        for i in range(embeddings.shape[0]):
            sparse, dense = self._prompt_embeddings(i, None, points, point_labels, mask_inputs)
            low_res, iou = self.mask_decoder(image_embeddings=embeddings[i : i + 1], image_pe=image_pe,
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)
            masks.append(low_res)
            scores.append(iou)
        return torch.cat(masks, dim=0), torch.cat(scores, dim=0)

    def decode_lone_click(self, embeddings: torch.Tensor, points: torch.Tensor, point_labels: torch.Tensor,
                          single: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits (B, 1, S/4, S/4) answering one click per image: of the three multimask masks, the one
        with the highest predicted IoU among those that agree with the click (a foreground click inside the mask, a
        background one outside); where none does, ``single`` (mask token 0's ``decode`` of the same click).
        Without the click rule a barely trained model answered one foreground click with an empty mask (measured:
        the one-epoch server-test model; its multimask tokens had seen a few steps, its token 0 every step)."""
        low_res, predicted_iou = self.decode_multimask(embeddings, points, point_labels)
        rows = torch.arange(low_res.shape[0], device=low_res.device)
        h, w = low_res.shape[-2:]
        x = (points[:, 0, 0] * w / self.image_size).long().clamp(0, w - 1)
        y = (points[:, 0, 1] * h / self.image_size).long().clamp(0, h - 1)
        agrees = (low_res[rows, :, y, x] > 0) == (point_labels[:, :1] > 0)  # (B, 3)
        # predicted IoUs lie in [0, 1]: agreeing masks first
        score = torch.where(agrees, predicted_iou.float(), predicted_iou.float() - 10.0)
        chosen = low_res[rows, score.argmax(1)][:, None]
        return torch.where(agrees.any(1)[:, None, None, None], chosen, single.to(chosen.dtype))

    def decode_queries(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-class decoder (prompt-free): low-resolution mask logits (B, N, S/4, S/4), class logits (B, N, C+1).

        SAM's ``MaskDecoder.predict_masks`` with N query tokens and one shared hypernetwork MLP (the Conv-LoRA
        reference) or one MLP per query (``query_init="class"``); all images share the same tokens, so the two-way
        transformer runs on the whole batch at once.
        """
        decoder = self.mask_decoder
        batch = embeddings.shape[0]
        _, dense = self._prompt_embeddings(0, None, None, None)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(batch, -1, -1)
        image_pe = self.prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
        hs, src = decoder.transformer(embeddings + dense, image_pe, tokens)
        queries = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        b, c, h, w = embeddings.shape
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        mlps = decoder.output_hypernetworks_mlps
        if len(mlps) == 1:
            hyper = mlps[0](queries)  # (B, N, C'): one MLP shared by every query
        else:
            hyper = torch.stack([mlp(queries[:, i]) for i, mlp in enumerate(mlps)], dim=1)
        masks = (hyper @ upscaled.flatten(2)).reshape(b, -1, *upscaled.shape[-2:])
        return masks, decoder.output_classifier(queries)

    def forward_with_low_res(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mask logits at ``image_size``, low-resolution logits)."""
        low_res = self.decode(self.encode_image(image), boxes, points, point_labels, mask_inputs)
        return self.upscale(low_res, image.shape[-2:]), low_res

    @staticmethod
    def upscale(low_res: torch.Tensor, size) -> torch.Tensor:
        """Low-resolution decoder logits to the input's size, as the training loss and the metrics see them."""
        return F.interpolate(low_res, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        *,
        interaction: Any = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits (B, M, S, S) for images (B, 3, S, S) in [0, 1].

        Args:
            image: batch of preprocessed images.
            boxes: (B, 4) or (B, M, 4) XYXY boxes in input pixels; M masks are predicted per image. A row of NaNs
                is no box for that image.
            points: (B, N, 2) XY point prompts in input pixels.
            point_labels: (B, N) labels, 1 foreground, 0 background, -1 padding (ignored).
            mask_inputs: (B, 1, S/4, S/4) low-resolution logits fed back as the dense prompt.
            interaction: a simulated annotator (``medsam_peft.engines.interactive``) that prompts this model
                several times against ``target`` (B, 1, S, S): training with iterative corrections, or the click
                protocol in evaluation. It goes through ``forward`` so that DDP sees one forward per step.

        With the multi-class decoder (``set_semantic_queries``) the model is prompt-free and returns
        ``{"masks": (B, N, S, S) mask logits, "classes": (B, N, C + 1) class logits}`` (last class = no object);
        ``medsam_peft.transforms.SemanticFromQueries`` turns that into per-class probabilities; with
        ``semantic_output = "probabilities"`` the forward returns those (B, C, S, S) itself.
        """
        if interaction is not None:
            if target is None:
                raise ValueError("an interaction needs the target masks it simulates clicks against")
            return interaction(self, image, target, boxes=boxes, points=points, point_labels=point_labels)
        if self.num_classes is not None:
            if boxes is not None or points is not None:
                raise ValueError("the multi-class decoder is prompt-free; use prepare_batch 'none' (no boxes/points)")
            low_res, classes = self.decode_queries(self.encode_image(image))
            masks = self.upscale(low_res, image.shape[-2:])
            if self.semantic_output == "probabilities":
                return query_probabilities(masks, classes)
            return {"masks": masks, "classes": classes}
        return self.forward_with_low_res(image, boxes, points, point_labels, mask_inputs)[0]

    def set_decoder_shape(self, mask_tokens: int | None = None, num_classes: int | None = None,
                          query_init: str | None = None) -> None:
        """Shape the mask decoder for a task before tuning: a structural choice of the model, not of any tuner.

        Args:
            mask_tokens: mask tokens (and hypernetwork MLPs) to keep, each initialised from the pretrained token 0;
                ``None`` keeps SAM's four (multimask output), or with ``num_classes`` and ``query_init="class"``
                one query per class. The Conv-LoRA reference decodes a binary task with 1.
            num_classes: classes including the background for multi-class semantic segmentation: the decoder
                becomes ``mask_tokens`` class-agnostic queries with a class head (``set_semantic_queries``).
            query_init: how the multi-class queries start (``set_semantic_queries``); ``None``: the default,
                ``"class"``. Ignored without ``num_classes``.
        """
        check_decoder_shape(mask_tokens, num_classes, query_init)
        if num_classes is not None:
            queries = num_classes if mask_tokens is None else mask_tokens  # null: one per class ("class" mode)
            self.set_semantic_queries(int(queries), int(num_classes), query_init or DEFAULT_QUERY_INIT)
        elif mask_tokens is not None:
            self.set_mask_tokens(int(mask_tokens))

    @property
    def query_init(self) -> str | None:
        """How the multi-class queries were initialised (``None`` for SAM's mask decoder)."""
        return getattr(self.mask_decoder, "query_init", None) if self.num_classes is not None else None

    @property
    def decoder_shape(self) -> dict[str, int | str | None]:
        """What ``set_decoder_shape`` made of this decoder, as adapter files record it."""
        shape: dict[str, int | str | None] = {"mask_tokens": self.num_mask_tokens, "num_classes": self.num_classes}
        if self.num_classes is not None:
            shape["query_init"] = self.query_init
        return shape

    def set_semantic_queries(self, num_queries: int, num_classes: int, query_init: str = DEFAULT_QUERY_INIT) -> None:
        """Switch to the multi-class decoder (MaskFormer-style set prediction on SAM's decoder).

        ``num_queries`` mask tokens scored by a new ``Linear(C_dec, num_classes + 1)`` class head
        (``mask_decoder.output_classifier``, PyTorch's default init), the last index meaning "no object";
        ``num_classes`` counts the background. ``query_init``:

        - ``"token0"``: the Conv-LoRA reference. Every query is a copy of the pretrained mask token 0 and the
          pretrained hypernetwork MLP 0 is shared by all of them: (N - 1) x 256 + 257 x (C + 1) parameters over
          the single-token decoder. The queries are identical, so only the Hungarian assignment separates them.
        - ``"perturbed"``: the same decoder, each query token 0 plus Gaussian noise of the pretrained tokens' std,
          so that the queries differ from the first step (same parameter count as ``"token0"``).
        - ``"class"`` (default): one query per class (``num_queries == num_classes``), query ``c`` always matched
          to class ``c`` (``MaskClassificationLoss(matching="by_class")``), starting from SAM's mask token
          ``c mod 4`` plus that noise, each with its own copy of the pretrained hypernetwork MLP 0 (SAMed-style
          per-class tokens): a query learns one structure instead of competing for all of them.
        """
        if query_init not in QUERY_INITS:
            raise ConfigError(f"query_init must be one of {QUERY_INITS}, got {query_init!r}")
        if num_queries < 1 or num_classes < 2:
            raise ValueError(f"need num_queries >= 1 and num_classes >= 2, got {num_queries} and {num_classes}")
        if query_init == "class" and num_queries != num_classes:
            raise ConfigError(f"query_init 'class' holds one query per class: mask_tokens must equal num_classes "
                              f"({num_classes}), got {num_queries}")
        decoder = self.mask_decoder
        pretrained = decoder.mask_tokens.weight.detach()
        dim = pretrained.shape[1]
        tokens = nn.Embedding(num_queries, dim, device=pretrained.device, dtype=pretrained.dtype)
        with torch.no_grad():
            if query_init == "token0":
                tokens.weight.copy_(pretrained[0:1].expand(num_queries, -1))
            else:
                start = pretrained[torch.arange(num_queries) % pretrained.shape[0]] if query_init == "class" \
                    else pretrained[0:1].expand(num_queries, -1)
                noise = torch.randn(num_queries, dim, device=pretrained.device, dtype=pretrained.dtype)
                tokens.weight.copy_(start + noise * pretrained.float().std().to(pretrained.dtype))
        first_mlp = decoder.output_hypernetworks_mlps[0]
        mlps = [first_mlp] + [copy.deepcopy(first_mlp) for _ in range(num_queries - 1)] if query_init == "class" \
            else [first_mlp]
        decoder.mask_tokens = tokens
        decoder.output_hypernetworks_mlps = nn.ModuleList(mlps)
        decoder.num_mask_tokens = num_queries
        decoder.query_init = query_init
        decoder.output_classifier = nn.Linear(dim, num_classes + 1, device=pretrained.device, dtype=pretrained.dtype)

    def set_mask_tokens(self, num_tokens: int) -> None:
        """Keep ``num_tokens`` mask tokens and hypernetwork MLPs, each initialised from the pretrained token 0.

        The Conv-LoRA reference decoder (binary task) uses a single mask token. All of SAM's mask tokens attend
        to each other in the two-way transformer, so this changes the output; it is a structural choice made
        before tuning, not part of any adapter. The IoU head keeps its size (it is frozen and unused).
        """
        decoder = self.mask_decoder
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if num_tokens == decoder.num_mask_tokens:
            return
        pretrained_token = decoder.mask_tokens.weight[0:1].detach()
        tokens = nn.Embedding(num_tokens, pretrained_token.shape[1], device=pretrained_token.device)
        with torch.no_grad():
            tokens.weight.copy_(pretrained_token.expand(num_tokens, -1))
        first_mlp = decoder.output_hypernetworks_mlps[0]
        mlps = [first_mlp] + [copy.deepcopy(first_mlp) for _ in range(num_tokens - 1)]
        decoder.mask_tokens = tokens
        decoder.output_hypernetworks_mlps = nn.ModuleList(mlps)
        decoder.num_mask_tokens = num_tokens


def reference_queries(reference_mask_tokens: int, num_classes: int | None, query_init: str | None) -> int | None:
    """What ``mask_tokens="reference"`` means: the tuner paper's token count, except for the per-class multi-class
    decoder (``query_init="class"``), whose queries are one per class (``None``)."""
    if num_classes is not None and (query_init or DEFAULT_QUERY_INIT) == "class":
        return None
    return reference_mask_tokens


def check_decoder_shape(mask_tokens: int | None, num_classes: int | None, query_init: str | None = None) -> None:
    """Raise ``ConfigError`` naming the setting when ``mask_tokens`` / ``num_classes`` / ``query_init`` cannot
    shape a decoder."""
    if query_init is not None and query_init not in QUERY_INITS:
        raise ConfigError(f"query_init must be one of {QUERY_INITS} or null (the default, {DEFAULT_QUERY_INIT!r}), "
                          f"got {query_init!r}")
    for key, value in (("mask_tokens", mask_tokens), ("num_classes", num_classes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{key} must be an integer or null, got {value!r}")
    if mask_tokens is not None and mask_tokens < 1:
        raise ConfigError(f"mask_tokens must be >= 1 or null (SAM's four), got {mask_tokens}")
    if num_classes is not None:
        if num_classes < 2:
            raise ConfigError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        if (query_init or DEFAULT_QUERY_INIT) == "class":
            if mask_tokens is not None and mask_tokens != num_classes:
                raise ConfigError(f"query_init 'class' holds one query per class: mask_tokens must be null or equal "
                                  f"num_classes ({num_classes}), got {mask_tokens}; the Hungarian-matched modes "
                                  "('token0', 'perturbed') take any mask_tokens")
        elif mask_tokens is None or mask_tokens < 2:
            raise ConfigError(
                f"num_classes={num_classes} needs mask_tokens = the number of queries, at least the most classes one "
                f"image holds (the Conv-LoRA reference uses 10); got mask_tokens={mask_tokens}"
            )
