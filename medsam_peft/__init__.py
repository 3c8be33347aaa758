"""medsam_peft: parameter-efficient fine-tuning of Segment Anything inside MONAI."""

from medsam_peft.utils import user_errors as _user_errors  # noqa: E402
from medsam_peft.version import __version__  # noqa: E402

if _user_errors.in_bundle_command():  # one line, not a traceback chain, for the user's mistakes (see the module)
    _user_errors.install()

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
