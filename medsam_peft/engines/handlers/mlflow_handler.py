"""MLflow tracking of a training run: one MLflow run per output folder, fed by the trainer and its evaluator, that
can never stop training."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from medsam_peft.utils.distributed import is_main_process

logger = logging.getLogger(__name__)

_EVENT_METHODS = ("start", "iteration_completed", "epoch_completed", "complete", "close")
OUTPUT_DIR_TAG = "medsam_peft.output_dir"


class SafeMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` for a trainer and the evaluator it runs, logging into one MLflow run.

    - The trainer's handler owns the run: it is the run of the same ``output_dir`` (tag ``medsam_peft.output_dir``)
      that has not finished, so a resumed run continues its history, or a new one. A run whose recorded params
      differ from this run's (``--learning_rate`` changed before resuming) is left alone and a new run is started.
    - The evaluator's handler is built with ``parent=<the trainer's handler>``: it logs the validation metrics into
      the parent's run and no params of its own (MONAI would log the evaluator's ``max_epochs``=1 into the same run,
      and MLflow refuses to change a param: every run with ``max_epochs`` != 1 lost its tracking that way).
    - Put the trainer's handler before ``ValidationHandler`` so that the run exists when validation-at-start logs;
      its end-of-run work (artifacts, closing the run) runs after every other ``COMPLETED`` handler, so files
      written at completion (the metric report) are logged.
    - A failure (unreachable server, locked store, ...) gives one warning, marks the run FAILED where possible and
      switches tracking off for the rest of the run instead of raising inside the training loop.

    Takes ``MLFlowHandler``'s arguments plus ``parent`` and ``output_dir``.
    """

    def __init__(self, *args: Any, parent: SafeMLFlowHandler | None = None, output_dir: str | None = None,
                 **kwargs: Any) -> None:
        self.requested_tracking_uri = kwargs.get("tracking_uri", args[0] if args else None)
        self.parent = parent
        self.output_dir = os.path.abspath(output_dir) if output_dir else None
        if not is_main_process():
            # Only rank 0 tracks: another rank must not even open the store (two processes migrating one new
            # sqlite file fail); ``attach`` is a no-op there.
            self.experiment_name, self.tracking_failed = kwargs.get("experiment_name"), True
            return
        if parent is not None:
            kwargs.setdefault("tracking_uri", parent.requested_tracking_uri)
            kwargs.setdefault("experiment_name", parent.experiment_name)
            kwargs["close_on_complete"] = False
        super().__init__(*args, **kwargs)
        if parent is not None:
            self.default_tracking_params = []  # the evaluator's engine state is no param of the training run
        self.tracking_failed = False
        for name in _EVENT_METHODS:
            setattr(self, name, self._guard(getattr(self, name), name))

    # ---- attaching -----------------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        if not is_main_process():  # one MLflow run per job; the metrics rank 0 logs are gathered over ranks
            return
        if self.parent is not None:
            super().attach(engine)
            return
        # Epoch metrics are logged at attach time, i.e. before the resume checkpoint is written (ResumeCheckpoint
        # registers its save at STARTED): a run killed after the checkpoint has logged that epoch. Run-level events
        # are registered at STARTED, after every handler attached later: complete/close then follow the other
        # COMPLETED handlers (reports, final checkpoints) and the files they write get logged.
        if not engine.has_event_handler(self.start, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.start)
        if self.iteration_log:
            event = Events.ITERATION_COMPLETED
            engine.add_event_handler(event(event_filter=self.iteration_log) if callable(self.iteration_log) else event,
                                     self.iteration_completed)
        if self.epoch_log:
            event = Events.EPOCH_COMPLETED
            engine.add_event_handler(event(event_filter=self.epoch_log) if callable(self.epoch_log) else event,
                                     self.epoch_completed)

        def late(engine: Engine) -> None:
            if not engine.has_event_handler(self.complete, Events.COMPLETED):
                engine.add_event_handler(Events.COMPLETED, self.complete)
            if self.close_on_complete and not engine.has_event_handler(self.close, Events.COMPLETED):
                engine.add_event_handler(Events.COMPLETED, self.close)

        engine.add_event_handler(Events.STARTED, late)

    # ---- the run ---------------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return not self.tracking_failed and (self.parent is None or not self.parent.tracking_failed)

    def start(self, engine: Engine) -> None:
        if self.parent is not None:
            if self.parent.cur_run is not None:  # log into the trainer's run
                self.experiment, self.cur_run = self.parent.experiment, self.parent.cur_run
                return
            if not self.parent.active:
                return
            super().start(engine)  # used without a trainer run (a stand-alone evaluation)
            return
        if self.cur_run is None:
            self._set_experiment()
            self.cur_run = self._find_or_create_run()
        params = {**(self.experiment_param or {}),
                  **{attr: getattr(engine.state, attr, None) for attr in self.default_tracking_params}}
        logged = self.client.get_run(self.cur_run.info.run_id).data.params
        self._log_params({k: v for k, v in params.items() if k not in logged})
        # MLflow keeps a param's first value; an engine figure that a resume on another number of processes changes
        # (epoch_length) is kept as a tag instead of failing the run
        for key, value in params.items():
            if key in logged and logged[key] != str(value):
                self.client.set_tag(self.cur_run.info.run_id, f"medsam_peft.resumed.{key}", str(value))
        if self.dataset_logger:
            self.dataset_logger(self.dataset_dict)
        else:
            self._default_dataset_log(self.dataset_dict)

    def _find_or_create_run(self):
        run_name = self.run_name or "run"
        wanted = {k: str(v) for k, v in (self.experiment_param or {}).items()}
        if self.output_dir is not None:
            # MLflow's filter grammar quotes with '; a folder name holding one is matched in Python instead
            candidates = self.client.search_runs(
                [self.experiment.experiment_id],
                filter_string=f"tags.`{OUTPUT_DIR_TAG}` = '{self.output_dir}'" if "'" not in self.output_dir else "",
                order_by=["attributes.start_time DESC"],
            )
            for run in candidates:
                if run.data.tags.get(OUTPUT_DIR_TAG) != self.output_dir or run.info.status == self.run_finish_status:
                    continue
                if run.info.run_name != run_name:
                    continue
                conflicts = {k: (run.data.params[k], v) for k, v in wanted.items()
                             if k in run.data.params and run.data.params[k] != v}
                if conflicts:
                    key, (old, new) = next(iter(conflicts.items()))
                    print(f"MLflow: the unfinished run {run.info.run_id} of {self.output_dir} has {key}={old}, this "
                          f"run {key}={new}: tracking into a new run", flush=True)
                    break
                if run.info.status != "RUNNING":
                    self.client.update_run(run.info.run_id, status="RUNNING")
                return self.client.get_run(run.info.run_id)
        tags = {OUTPUT_DIR_TAG: self.output_dir} if self.output_dir else None
        return self.client.create_run(experiment_id=self.experiment.experiment_id, run_name=run_name, tags=tags)

    def complete(self) -> None:
        if self.parent is None:
            super().complete()

    def close(self) -> None:
        if self.parent is None:
            super().close()

    # ---- never stop training ----------------------------------------------------------------------------------------
    def _guard(self, method: Any, name: str) -> Any:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> None:
            if not self.active:
                return None
            try:
                return method(*args, **kwargs)
            except Exception as err:  # any tracking failure: warn once, keep training
                self.tracking_failed = True
                logger.warning(
                    "MLflow tracking to %r failed in %s (%s: %s); training continues without tracking",
                    self.requested_tracking_uri, name, type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "",
                )
                self._mark_failed()
                return None

        return guarded

    def _mark_failed(self) -> None:
        run = self.cur_run if self.parent is None else None
        if run is None:
            return
        try:
            self.client.set_terminated(run.info.run_id, "FAILED")
        except Exception:  # the store that just failed may well fail again; the warning is already out
            pass


__all__ = ["OUTPUT_DIR_TAG", "SafeMLFlowHandler"]
