"""The CUDA paths, on a machine with a GPU: `pytest -m cuda` (deselected by default; CI has none).

Each test runs a real stage with `device=cuda` on the tiny configs of the CPU tests and checks what
a GPU user relies on: the stage runs there, learns, and what it writes loads on a CPU-only machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedray.run import run
from tests.conftest import compose_plain
from tests.integration.test_detect import TINY_DATA, TINY_DETECT, no_network, yolo_env  # noqa: F401
from tests.integration.test_distill_stage import FAST as DISTILL
from tests.integration.test_federated import LEARNABLE
from tests.integration.test_pretrain import PRETRAIN
from tests.integration.test_retrieval import _cfg as retrieval_cfg
from tests.unit.test_compose import assert_torch_close_to_numpy, background, cutouts  # noqa: F401

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_torch_compositor_on_cuda_matches_numpy(background, cutouts):  # noqa: F811
    assert_torch_close_to_numpy(background, cutouts, "cuda")  # the CPU test's bounds


@pytest.mark.parametrize("precision", ["fp32", "auto"])  # auto: bf16 autocast on the GPU
def test_pretraining_on_cuda_learns_and_saves_cpu_weights(precision, tmp_path):
    cfg = compose_plain(["+experiment=smoke", f"data.cache_dir={tmp_path / 'cache'}", *PRETRAIN,
                         "pretrain.epochs=10", "data.train_per_class=60", "stage=pretrain",
                         "device=cuda", f"pretrain.precision={precision}"])
    cfg["run_dir"] = str(tmp_path / "run")
    torch.cuda.reset_peak_memory_stats()
    out = run(cfg)
    assert torch.cuda.max_memory_allocated() > 0  # the model trained on the GPU
    weights = Path(out["weights"])
    saved = torch.load(weights, map_location=None, weights_only=True)["model"]
    assert all(t.device.type == "cpu" for t in saved.values())  # loads where there is no GPU
    report = json.loads((weights.parent / "metrics.json").read_text())
    assert report["public/val_acc"] > 1 / report["public/classes"] + 0.3, report


def test_clients_train_on_the_gpu_in_process(make_cfg):
    torch.cuda.reset_peak_memory_stats()
    metrics = run(make_cfg(*LEARNABLE, "ray=inprocess", "ray.client_gpus=1", "device=cuda"))
    assert torch.cuda.max_memory_allocated() > 0  # the clients' model lived on the GPU
    assert metrics["val/acc"] > 0.25 + 0.3, metrics  # 4 classes: chance + 0.3, as on the CPU


def test_ray_client_actors_share_the_gpu(make_cfg, ray_session, caplog, monkeypatch):
    import logging

    if not ray_session.cluster_resources().get("GPU"):
        pytest.fail("the local Ray sees no GPU although torch does")
    monkeypatch.setattr(logging.getLogger("fedray"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="fedray"):
        metrics = run(make_cfg(*LEARNABLE, "ray.client_gpus=0.25", "device=cuda"))
    assert "+ 0.25 GPU each" in caplog.text
    assert metrics["val/acc"] > 0.25 + 0.3, metrics


def test_distill_stage_on_cuda(make_cfg):
    summary = run(make_cfg(*DISTILL, "data.train_per_class=60", "distill.teacher_epochs=20",
                           "distill.pre_epochs=5", "distill.epochs=10", "device=cuda"))
    assert summary["teacher/val_acc"] > 0.25 + 0.3 and summary["val/acc"] > 0.25 + 0.2, summary
    assert summary["teacher/params"] == 24068 and summary["student/params"] == 1700


def test_detector_trains_on_cuda(tmp_path, yolo_env, no_network):  # noqa: F811
    # on a GPU ultralytics checks AMP with weights it would download: refused, nothing leaves
    cfg = compose_plain(["+experiment=pill_detect", f"data.cache_dir={tmp_path / 'cache'}",
                         *TINY_DATA, *TINY_DETECT, "device=cuda"])
    cfg["run_dir"] = str(tmp_path / "run")
    metrics = run(cfg)
    assert Path(metrics["weights"]).exists()
    assert 0.0 <= metrics["val/AP80"] <= metrics["val/AP50"] + 1e-9 <= 1.0 + 1e-9
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and "train/box_loss" in rows[0]
    assert no_network == []


def test_retrieval_stage_on_cuda(tmp_path):
    # teacher, student, the distilled student and a federated teacher, all on the GPU
    torch.cuda.reset_peak_memory_stats()
    summary = run(retrieval_cfg(tmp_path, "device=cuda", "partition=iid",
                                "retrieval.models=[teacher,student,student_kd,teacher_fed]",
                                "retrieval.federated.clients=2", "retrieval.federated.rounds=1"))
    assert torch.cuda.max_memory_allocated() > 0
    for name in ("teacher", "student", "student_kd", "teacher_fed"):
        assert 0.0 <= summary[f"{name}/consumer/multi/two_side/top5"] <= 1.0
