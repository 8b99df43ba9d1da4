"""fl.local: client-local layers (FedBN) through a whole federated run, on both backends."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fedray.data.datasets import load_images, load_labels
from fedray.data.partition import partition
from fedray.data.sources import build_dataset
from fedray.fl import train
from fedray.fl.checkpoint import CHECKPOINT
from fedray.models import build_model
from fedray.run import run

pytestmark = pytest.mark.usefixtures("ray_session")

FEDBN = ("fl.local=norm", "fl.num_clients=3", "fl.rounds=3", "partition=pathological",
         "partition.classes_per_client=2", "data.train_per_class=18")


def _ckpt(run_dir) -> dict:
    with open(run_dir / CHECKPOINT, "rb") as fh:
        return pickle.load(fh)


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_norm_layers_stay_on_their_clients_and_each_client_is_scored_with_its_own(
    make_cfg, tmp_path
):
    cfg = make_cfg(*FEDBN)
    summary = run(cfg)
    ckpt = _ckpt(tmp_path / "run")
    params, local = ckpt["params"], ckpt["local"]
    names = sorted(local["clients"][0])
    assert names and all(".running_" in n or n.split(".")[-1] in ("weight", "bias") for n in names)
    assert sorted(local["clients"]) == [0, 1, 2]  # every client kept its own
    a, b = local["clients"][0], local["clients"][1]
    assert any(not np.array_equal(a[n], b[n]) for n in names)  # they trained apart
    # the server's copy of a local entry is the clients' mean weighted by their train samples
    w = np.array([local["samples"][c] for c in (0, 1, 2)], np.float64)
    w /= w.sum()
    for n in names:
        mean = sum(wi * local["clients"][c][n] for wi, c in zip(w, (0, 1, 2), strict=True))
        np.testing.assert_allclose(params[n], mean, rtol=1e-5, atol=1e-6)
    # uploads carry the shared entries only
    shared = sum(v.nbytes for k, v in params.items() if k not in local["clients"][0])
    rows = _rows(tmp_path / "run")
    assert all(r["comm/bytes_up"] == 3 * shared for r in rows)
    assert all("val_local/acc" in r for r in rows)
    # client c's summary score is its own model (shared entries + its local ones) on the val
    # images of its own classes, recomputed here from the checkpoint
    root = build_dataset(cfg["data"], int(cfg["seed"])).root  # the cached set the run used
    train_y, val_y = load_labels(root, "train"), load_labels(root, "val")
    parts = partition(train_y, cfg["partition"], 3, int(cfg["seed"]))
    model = build_model(cfg["model"], int(cfg["data"]["num_classes"]))
    val_x = load_images(root, "val")
    for c in (0, 1, 2):
        train.set_params(model, {**params, **local["clients"][c]})
        mine = np.isin(val_y, np.unique(train_y[parts[c]]))
        pred = train.predict_logits(model, val_x[mine]).argmax(1).numpy()
        assert summary[f"client/{c}/val_acc"] == pytest.approx(float((pred == val_y[mine]).mean()))


@pytest.mark.slow
def test_fedbn_resumes_and_runs_the_same_in_process(make_cfg, tmp_path):
    full, cut, inproc = tmp_path / "full", tmp_path / "cut", tmp_path / "inproc"
    run(make_cfg(*FEDBN, run_dir=full))
    run(make_cfg(*FEDBN[:2], "fl.rounds=1", *FEDBN[3:], run_dir=cut))  # "killed" after round 1
    run(make_cfg(*FEDBN, f"resume={cut}", run_dir=tmp_path / "new"))
    run(make_cfg(*FEDBN, "ray.backend=inprocess", run_dir=inproc))
    ref = _ckpt(full)
    for other in (_ckpt(cut), _ckpt(inproc)):
        assert all(np.array_equal(ref["params"][k], other["params"][k]) for k in ref["params"])
        for c, entries in ref["local"]["clients"].items():
            assert all(np.array_equal(v, other["local"]["clients"][c][k])
                       for k, v in entries.items())


@pytest.mark.slow
def test_secure_aggregation_masks_the_shared_entries_and_leaves_the_local_ones_home(
    make_cfg, tmp_path
):
    plain, masked = tmp_path / "plain", tmp_path / "masked"
    run(make_cfg(*FEDBN, run_dir=plain))
    run(make_cfg(*FEDBN, "fl.secure_agg=secagg+", run_dir=masked))
    a, b = _ckpt(plain), _ckpt(masked)
    for k, v in a["params"].items():  # the same model up to the 16-bit encoding of the sums
        assert np.allclose(b["params"][k], v, atol=2e-3), k
    for c, entries in a["local"]["clients"].items():  # each client's own, never masked or sent
        assert all(np.allclose(b["local"]["clients"][c][k], v, atol=2e-3)
                   for k, v in entries.items())
    shared = sum(v.nbytes for k, v in a["params"].items() if k not in a["local"]["clients"][0])
    rows = _rows(masked)
    # what went up is one masked ring vector per client: 4 bytes a shared value, + 2 counters
    # (weight, unclipped) and the train loss
    assert all(r["comm/bytes_up"] == 3 * (shared + 3 * 4) for r in rows)
    assert all(r["secagg/vanished_after_mask"] == 0 for r in rows)
