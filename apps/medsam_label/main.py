"""MONAI Label app serving bundles exported by ``medsam-peft export-bundle`` (base backbone + adapter).

    python -m monailabel.main start_server --app apps/medsam_label --studies DATA_DIR \
        --conf models NAME_OR_FOLDER[,...] --conf zoo_source local --host 127.0.0.1 --port 8000

Bundles are looked up as ``apps/medsam_label/model/<NAME>`` or taken as folder paths. See README "MONAI Label".
"""

from __future__ import annotations

from monailabel.interfaces.app import MONAILabelApp

from medsam_peft import __version__
from medsam_peft.label.app import answer_infer, guard_infer_endpoint, infer_tasks


class MedSamLabelApp(MONAILabelApp):  # MONAI Label picks the class whose direct base is MONAILabelApp
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        guard_infer_endpoint()  # only datastore ids and uploads are read; bad params are 422s
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medsam_peft",
                         description="SAM tuned with medsam_peft: box/point prompts, 2-D images and volumes",
                         version=__version__)

    def init_infers(self):
        return infer_tasks(self.app_dir, self.conf)

    def infer(self, request, datastore=None):
        return answer_infer(self, super().infer, request, datastore)
