"""seg_two_sites end to end, shrunk: a UNet on two pill sites through fedray.run.run."""

from __future__ import annotations

import json

import pytest

from fedray.run import run
from tests.conftest import compose_plain

pytestmark = pytest.mark.usefixtures("ray_session")

TINY = (
    "data.train_per_site=12",
    "data.val_per_site=6",
    "data.image_size=32",
    "data.num_pills=3",
    "model.width=4",
    "model.depth=2",
    "fl.rounds=2",
    "client.batch_size=6",
    "ray.client_cpus=0.5",
    "logger=jsonl",
)


def _cfg(tmp_path, cache_dir, *overrides: str) -> dict:
    cfg = compose_plain(
        ["+experiment=seg_two_sites", f"data.cache_dir={cache_dir}", *TINY, *overrides]
    )
    cfg["run_dir"] = str(tmp_path / "run")
    return cfg


@pytest.mark.slow
def test_seg_two_sites_federated_reports_iou_per_site(tmp_path, cache_dir):
    metrics = run(_cfg(tmp_path, cache_dir))
    for key in ("val/iou", "val/dice", "val/group0/iou", "val/group1/iou", "client/1/val_iou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # one client per site: its own score is the global model on its site's val scenes
    assert metrics["client/0/val_iou"] == metrics["val/group0/iou"]
    assert "most_confused" not in metrics  # a classification summary only
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all("val/iou" in r for r in rows)
    assert rows[0]["comm/bytes_up"] > 0
    assert (tmp_path / "run" / "iou_vs_round.png").exists()
    assert not (tmp_path / "run" / "confusion_matrix.csv").exists()


@pytest.mark.slow
def test_seg_two_sites_isolated_scores_each_site_model_on_each_site(tmp_path, cache_dir):
    metrics = run(_cfg(tmp_path, cache_dir, "stage=isolated", "fl.rounds=1"))
    for c in (0, 1):
        for g in (0, 1):
            assert 0.0 <= metrics[f"client/{c}/val/group{g}/iou"] <= 1.0
    # the summary's val/iou is the mean of the two site models on the union of the val sets
    assert metrics["val/iou"] == pytest.approx(
        (metrics["client/0/val_iou"] + metrics["client/1/val_iou"]) / 2
    )
    assert metrics["comm/bytes_total"] == 0


@pytest.mark.slow
def test_seg_two_sites_centralized_pools_both_sites(tmp_path, cache_dir):
    metrics = run(_cfg(tmp_path, cache_dir, "stage=centralized", "fl.rounds=1"))
    assert metrics["stage"] == "centralized"
    for key in ("val/iou", "val/group0/iou", "val/group1/iou", "val/group1/dice"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_augment_is_refused_for_segmentation(tmp_path, cache_dir):
    from fedray.config import ConfigError

    with pytest.raises(ConfigError, match="client.augment"):
        run(_cfg(tmp_path, cache_dir, "client.augment=true", "stage=centralized"))
