"""SAM-family backbones built from the official ``segment_anything`` classes."""

from medsam_peft.models.activation_checkpointing import set_activation_checkpointing
from medsam_peft.models.attention import set_attention_backend
from medsam_peft.models.build import build_sam, lite_medsam_checkpoint_path, resolve_checkpoint
from medsam_peft.models.checkpoint import CheckpointError, load_checkpoint_into, read_state_dict
from medsam_peft.models.embedding_cache import ImageEmbeddingCache, TrunkEmbeddingCache
from medsam_peft.models.promptable_sam import PromptableSam
from medsam_peft.models.registry import BACKBONES, BackboneSpec, get_backbone_spec, list_backbones

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "CheckpointError",
    "PromptableSam",
    "ImageEmbeddingCache",
    "TrunkEmbeddingCache",
    "build_sam",
    "get_backbone_spec",
    "list_backbones",
    "lite_medsam_checkpoint_path",
    "load_checkpoint_into",
    "read_state_dict",
    "resolve_checkpoint",
    "set_activation_checkpointing",
    "set_attention_backend",
]
