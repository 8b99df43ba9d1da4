"""The task seam: segmentation metrics and loss exact on tiny masks; classification unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedray.config import ConfigError
from fedray.data.datasets import DatasetError, write_groups, write_masks, write_split
from fedray.data.natural import partition_by_group
from fedray.data.partition import PartitionError
from fedray.metrics import MetricAccumulator
from fedray.models import build_model
from fedray.models.unet import UNet
from fedray.tasks import build_task
from fedray.tasks.classification import Classification
from fedray.tasks.segmentation import (
    Segmentation,
    scores_from_confusion,
    soft_dice_loss,
)


def _logits(pred: np.ndarray, classes: int = 2) -> torch.Tensor:
    """Logits (B, C, H, W) whose argmax is `pred` (B, H, W)."""
    return F.one_hot(torch.as_tensor(pred).long(), classes).permute(0, 3, 1, 2).float() * 4.0


def test_iou_and_dice_on_hand_made_masks():
    # Prepare: one 3 x 3 image; truth has 4 pill pixels, the prediction 3, 2 of them right
    truth = np.array([[[1, 1, 0], [1, 1, 0], [0, 0, 0]]])
    pred = np.array([[[1, 0, 0], [1, 0, 1], [0, 0, 0]]])
    acc = Segmentation().accumulator(2)
    # Execute
    acc.update(_logits(pred), torch.as_tensor(truth))
    m = acc.compute()
    # Assert: pill TP 2, FP 1, FN 2; background TP 4, FP 2, FN 1
    assert m["iou_1"] == pytest.approx(2 / 5)
    assert m["dice_1"] == pytest.approx(4 / 7)
    assert m["iou_0"] == pytest.approx(4 / 7)
    assert m["dice_0"] == pytest.approx(8 / 11)
    assert m["iou"] == pytest.approx(2 / 5)  # foreground only by default
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["pixel_acc"] == pytest.approx(6 / 9)
    with_bg = Segmentation(include_background=True).accumulator(2)
    with_bg.update(_logits(pred), torch.as_tensor(truth))
    assert with_bg.compute()["iou"] == pytest.approx((2 / 5 + 4 / 7) / 2)


def test_metrics_pool_pixels_over_batches_and_skip_absent_classes():
    truth = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    one = Segmentation().accumulator(3)
    one.update(_logits(pred, 3), torch.as_tensor(truth))
    two = Segmentation().accumulator(3)
    for i in range(2):
        two.update(_logits(pred[i : i + 1], 3), torch.as_tensor(truth[i : i + 1]))
    a, b = one.compute(), two.compute()
    assert a["iou_1"] == b["iou_1"] == pytest.approx(1 / 2)
    assert math.isnan(a["iou_2"])  # class 2: in neither masks nor predictions
    assert a["iou"] == pytest.approx(1 / 2)  # ... and left out of the mean
    np.testing.assert_array_equal(one.confusion, two.confusion)
    assert one.confusion.sum() == 8


def test_scores_from_confusion_exact():
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    s = scores_from_confusion(cm)
    assert s["iou_1"] == pytest.approx(3 / (3 + 1 + 3))
    assert s["iou_2"] == pytest.approx(4 / 5)
    assert s["iou"] == pytest.approx((3 / 7 + 4 / 5) / 2)
    assert s["dice_2"] == pytest.approx(8 / 9)


def test_dice_bce_loss_exact_on_a_tiny_tensor():
    # one image, 1 x 2 pixels; two-channel logits with logit differences 0 and ln 3
    out = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    target = torch.tensor([[[1, 0]]])
    # p(pill) = 1/2 and 3/4; BCE = -(ln 1/2 + ln 1/4) / 2 = 1.5 ln 2
    bce = 1.5 * math.log(2.0)
    # soft Dice (smooth 1): 1 - (2 * 1/2 + 1) / ((1/2 + 3/4) + 1 + 1) = 1 - 2 / 3.25
    dice = 1 - 2 / 3.25
    task = Segmentation()
    assert float(task.loss(out, target)) == pytest.approx(bce + dice, rel=1e-6)
    assert float(soft_dice_loss(out, target)) == pytest.approx(dice, rel=1e-6)
    # a one-channel (sigmoid) head with the same logit difference gives the same loss
    single = out[:, 1:] - out[:, :1]
    assert float(task.loss(single, target)) == pytest.approx(bce + dice, rel=1e-6)
    assert float(Segmentation(dice_weight=0).loss(out, target)) == pytest.approx(bce, rel=1e-6)


def test_classification_task_gives_todays_loss_and_metrics():
    torch.manual_seed(0)
    logits = torch.randn(10, 4)
    y = torch.arange(10) % 4
    task = Classification()
    assert torch.equal(task.loss(logits, y), torch.nn.CrossEntropyLoss()(logits, y))
    smooth = Classification(label_smoothing=0.1)
    assert torch.equal(
        smooth.loss(logits, y), torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    )
    acc, ref = task.accumulator(4), MetricAccumulator(4)
    acc.update(logits, y)
    ref.update(logits, y)
    assert acc.compute() == ref.compute()
    assert task.rank_key == "val/acc" and task.confusion
    assert isinstance(build_task(None), Classification)


def test_training_with_the_classification_task_is_bit_identical():
    from fedray.fl.train import evaluate, get_params, train_local
    from fedray.models import TinyCNN, trainable_names

    x = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 1, 2] * 4)
    results = []
    for task in (None, Classification()):
        torch.manual_seed(0)
        model = TinyCNN(3, width=4)
        names = trainable_names(model, "all")
        sgd = lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)  # noqa: E731
        stats = train_local(model, x, y, names, 2, 4, sgd, seed=1, task=task)
        metrics, cm = evaluate(model, x, y, 3, task=task)
        results.append((stats, metrics, cm, get_params(model, names)))
    (s0, m0, c0, p0), (s1, m1, c1, p1) = results
    assert s0 == s1 and m0 == m1
    np.testing.assert_array_equal(c0, c1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k])


def test_unet_shapes_and_build_task_from_config():
    task = build_task({"_target_": "fedray.tasks.segmentation.Segmentation", "name": "seg"})
    assert task.rank_key == "val/iou" and task.partition_by == "group"
    model = build_model({"_target_": "fedray.models.unet.UNet", "width": 8, "depth": 2}, 2)
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    out = model(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.zeros(1, 3, 18, 18))
    with pytest.raises(ConfigError, match="model.norm"):
        UNet(2, norm="layer")
    with pytest.raises(ConfigError, match="task.partition_by"):
        Segmentation(partition_by="site")
    with pytest.raises(ConfigError, match="task._target_"):
        build_task({"_target_": "collections.OrderedDict"})


def test_masks_and_groups_round_trip_and_partition_by_group(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    write_split(tmp_path, "train", images, np.zeros(4, np.int64))
    write_masks(tmp_path, "train", np.ones((4, 8, 8), np.uint8))
    write_groups(tmp_path, "train", np.array([1, 0, 1, 0]))
    seg = Segmentation()
    assert seg.load_targets(tmp_path, "train").shape == (4, 8, 8)
    keys = seg.partition_keys(tmp_path, "train")
    assert [p.tolist() for p in partition_by_group(keys, 2, 0)] == [[1, 3], [0, 2]]
    assert [p.tolist() for p in partition_by_group(keys, 1, 0)] == [[0, 1, 2, 3]]
    four = partition_by_group(keys, 4, 0)
    assert sorted(np.concatenate(four).tolist()) == [0, 1, 2, 3] and len(four) == 4
    with pytest.raises(PartitionError, match="multiple"):
        partition_by_group(keys, 3, 0)
    with pytest.raises(DatasetError, match="do not match"):
        write_masks(tmp_path, "train", np.ones((3, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="val_groups.npy"):
        seg.partition_keys(tmp_path, "val")


@pytest.mark.parametrize("option", ["classification", "segmentation"])
def test_task_options_compose_and_build(option):
    from tests.conftest import compose_plain

    cfg = compose_plain([f"task={option}"])
    assert build_task(cfg["task"]).name == option
    seg = compose_plain(["+experiment=seg_two_sites"])
    assert seg["task"]["_target_"].endswith("Segmentation")
    assert seg["partition"]["_target_"] == "fedray.data.natural.partition_by_group"


def test_fedrs_scales_only_the_absent_classes_logits_on_a_clients_copy():
    from fedray.fl.train import train_local
    from fedray.models import TinyCNN, trainable_names

    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    y = torch.tensor([0, 2, 0, 2, 2, 0])
    task = Classification(absent_scale=0.25)
    assert float(task.local(np.arange(5)).train_loss(logits, y, None)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y))
    )  # a shard with every class (centralized): plain cross-entropy
    mine = task.local(np.array([2, 0, 2, 0]))
    assert task.present is None and mine.present.tolist() == [0, 2]  # the shared task untouched
    scale = torch.tensor([1.0, 0.25, 1.0, 0.25, 0.25])
    want = torch.nn.functional.cross_entropy(logits * scale, y)
    assert float(mine.train_loss(logits, y, None)) == pytest.approx(float(want))
    assert float(mine.loss(logits, y)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y))
    )  # evaluation's loss is plain
    # absent_scale 0: the absent classes' rows get no gradient at all (FedRS's restricted softmax)
    torch.manual_seed(1)
    model = TinyCNN(5, width=4)
    head = [n for n in trainable_names(model, "all") if n.endswith("weight")][-1]
    before = dict(model.named_parameters())[head].detach().clone()
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    sgd = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
    train_local(model, x, np.array([0, 2] * 4), [head], 2, 4, sgd, seed=0,
                task=Classification(absent_scale=0.0))
    moved = (dict(model.named_parameters())[head].detach() - before).abs().flatten(1).sum(1)
    assert moved[[0, 2]].min() > 0 and moved[[1, 3, 4]].max() == 0
    assert Classification().local(np.array([0])) is not None
    for bad in (1.5, -0.1, "x", True):
        with pytest.raises(ConfigError, match="task.absent_scale"):
            Classification(absent_scale=bad)


class SevenLogits(torch.nn.Module):
    """A bring-your-own model whose head ignores the data's classes."""

    def __init__(self, **tiny_cnn_keys: object) -> None:  # model=tiny_cnn's width, zooms...
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                        torch.nn.Linear(3, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_outputs_that_do_not_fit_the_task_are_refused_by_the_config_check(make_cfg):
    """Once a MetricsError after Ray started and round 1 trained."""
    from fedray.validate import validate

    cfg = make_cfg(f"model._target_={__name__}.SevenLogits")
    import re

    with pytest.raises(ConfigError, match=rf"^model: {re.escape(__name__)}\.SevenLogits gives "
                                          r"outputs of shape \(2, 7\) on 2 images of 32 x 32 px, "
                                          r"but task=classification needs \(2, 4\) for the "
                                          r"data's 4 classes$"):
        validate(cfg)
    cfg = make_cfg("task=segmentation")  # TinyCNN: class logits, no masks
    with pytest.raises(ConfigError, match=r"^model: fedray\.models\.tiny_cnn\.TinyCNN gives "
                                          r"outputs of shape \(2, 4\) .* task=segmentation needs "
                                          r"\(2, 4, 32, 32\)"):
        validate(cfg)


def test_output_shape_defaults_to_the_example_batchs_rank():
    from fedray.pill.retrieval.task import Retrieval

    seg = Segmentation()
    images = np.zeros((2, 8, 8, 3), np.uint8)
    seg.check_outputs(torch.zeros(2, 1, 8, 8), images, 2, "m")  # binary: one channel will do
    with pytest.raises(ConfigError, match=r"needs \(2, 3, 8, 8\)"):
        seg.check_outputs(torch.zeros(2, 3, 4, 4), images, 3, "m")
    retrieval = Retrieval()  # any embedding size, from its example batch's rank
    assert retrieval.output_shape(2, 8, 5) == (2, None)
    retrieval.check_outputs(torch.zeros(2, 128), images, 5, "m")
    with pytest.raises(ConfigError, match=r"needs \(2, \*\) for the data's 5 classes \(\*: any"):
        retrieval.check_outputs(torch.zeros(2, 128, 1, 1), images, 5, "m")
