"""FedDF's server-side distillation under resume: a killed run continues to the same weights."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fedray.fl.checkpoint import CHECKPOINT
from fedray.run import run

pytestmark = pytest.mark.usefixtures("ray_session")

# a short distillation with no held-out early stop: its last step, dropout and all, is the model
FEDDF = ("strategy=feddf", "strategy.steps=8", "strategy.batch_size=16", "strategy.val_fraction=0")


def _final_params(run_dir) -> dict:
    with open(run_dir / CHECKPOINT, "rb") as fh:
        return pickle.load(fh)["params"]


@pytest.mark.slow
def test_feddf_resume_equals_uninterrupted(make_cfg, tmp_path):
    """The student distils with Dropout on; its masks must not come from the driver's global
    torch RNG, which the resumed run re-seeds at construction (its round 2 would differ)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(make_cfg("fl.rounds=2", *FEDDF, run_dir=full))
    run(make_cfg("fl.rounds=1", *FEDDF, run_dir=cut))  # "killed" after round 1
    run(make_cfg("fl.rounds=2", *FEDDF, f"resume={cut}", run_dir=tmp_path / "new"))
    pf, pc = _final_params(full), _final_params(cut)
    assert pf.keys() == pc.keys() and all(np.array_equal(pf[k], pc[k]) for k in pf)
