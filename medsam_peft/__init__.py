"""medsam_peft: parameter-efficient fine-tuning of Segment Anything inside MONAI."""

__version__ = "0.1.0"

from medsam_peft.models import PromptableSam, build_sam, list_backbones  # noqa: E402
from medsam_peft.tuners import (  # noqa: E402
    build_tuned_sam,
    get_tuned_model,
    list_tuners,
    load_adapter,
    load_tuned_sam,
    save_adapter,
)

__all__ = [
    "PromptableSam",
    "__version__",
    "build_sam",
    "build_tuned_sam",
    "get_tuned_model",
    "list_backbones",
    "list_tuners",
    "load_adapter",
    "load_tuned_sam",
    "save_adapter",
]
