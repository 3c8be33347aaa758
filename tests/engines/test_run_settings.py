"""RunSettings: the training recipe kept in resume.pt, compared on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsam_peft.engines import RunSettings


def test_settings_round_trip_through_a_weights_only_file_and_name_every_difference(tmp_path: Path) -> None:
    saved = RunSettings({"tuner_options": {"r": 4, "scales": (1, 2)}, "learning_rate": 2e-4, "multimask": True,
                         "checkpoint": tmp_path / "sam.pth"})
    torch.save({"settings": saved.state_dict()}, tmp_path / "resume.pt")
    state = torch.load(tmp_path / "resume.pt", weights_only=True)["settings"]
    # the same values as a new run's config gives them (a list for the tuple, a string for the path): accepted
    RunSettings({"tuner_options": {"scales": [1, 2], "r": 4}, "learning_rate": 0.0002, "multimask": True,
                 "checkpoint": str(tmp_path / "sam.pth")}).load_state_dict(state)
    with pytest.raises(ValueError) as err:
        RunSettings({"tuner_options": {"r": 8, "scales": [1, 2]}, "learning_rate": 0.0002, "multimask": False,
                     "checkpoint": str(tmp_path / "sam.pth")}).load_state_dict(state)
    assert str(err.value) == ('multimask true in the file, false now, tuner_options {"r": 4, "scales": [1, 2]} in the '
                              'file, {"r": 8, "scales": [1, 2]} now')
    # a setting added after the file was written (or dropped since) is not a difference
    RunSettings({"learning_rate": 0.0002, "click_radius": 5.0}).load_state_dict(state)
