"""MONAI Label app serving bundles exported by ``medsam-peft export-bundle`` (base backbone + adapter).

    python -m monailabel.main start_server --app apps/medsam_label --studies DATA_DIR \
        --conf models NAME_OR_FOLDER[,...] --conf zoo_source local --host 127.0.0.1 --port 8000

Bundles are looked up as ``apps/medsam_label/model/<NAME>`` or taken as folder paths. Each served bundle gets an
infer task, a ``train`` task (fine-tunes its adapter on the datastore's final labels) and ``dice`` scoring; strategies
``random``/``first`` (and ``epistemic`` for prompt-free bundles). See README "MONAI Label".
"""

from __future__ import annotations

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.utils.app import app_instance

from medsam_peft import __version__
from medsam_peft.label.app import (answer_infer, answer_task, guard_infer_endpoint, guard_train_endpoint, infer_tasks,
                                   served_predictors, train_tasks)
from medsam_peft.label.scoring import scoring_methods, strategies


class MedSamLabelApp(MONAILabelApp):  # MONAI Label picks the class whose direct base is MONAILabelApp
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        guard_infer_endpoint()  # only datastore ids and uploads are read; bad params are 422s
        guard_train_endpoint(app_instance)  # unknown models are 404s, bad train settings 422s, before queueing
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medsam_peft",
                         description="SAM tuned with medsam_peft: box/point prompts, 2-D images and volumes",
                         version=__version__)

    def init_infers(self):
        return infer_tasks(self.app_dir, self.conf)

    def init_trainers(self):
        return train_tasks(self.app_dir, self.conf, self._infers)

    def init_strategies(self):
        return strategies(served_predictors(self._infers))

    def init_scoring_methods(self):
        return scoring_methods(served_predictors(self._infers))

    def infer(self, request, datastore=None):
        return answer_infer(self, super().infer, request, datastore)

    def train(self, request):
        return answer_task(super().train, request)

    def next_sample(self, request):
        return answer_task(super().next_sample, request)

    def scoring(self, request, datastore=None):
        return answer_task(lambda r: super(MedSamLabelApp, self).scoring(r, datastore), request)
