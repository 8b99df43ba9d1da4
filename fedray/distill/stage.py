"""stage=distill: a trained teacher's knowledge into a small on-device student.

Teacher (`distill.teacher`): a run directory (its `config.yaml` + `checkpoint.pkl`: the model and
dataset of that run, its final params), a saved state_dict of `model`, or null (train `model`
here first, centrally). Student: `distill.student`, any `_target_` model. Two-stage recipe: the
student is first trained alone on the hard labels (`pre_epochs`), then distilled (`epochs`) with
`distill.loss` on the transfer set; the same student continued alone for `epochs` is the
no-teacher bar (`baseline`). Reports both models' parameters, MACs, file size, CPU latency and
accuracy, and the compression ratios.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedray.checks import as_key, mapping
from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, load_images, load_labels, to_tensor_batch
from fedray.distill.ensemble import Ensemble
from fedray.distill.losses import LOSSES, distill_loss
from fedray.distill.profile import profile
from fedray.distill.teachers import load_teacher, teacher_from_state
from fedray.logging import RunLogger

log = logging.getLogger("fedray")

KEYS = (
    "teacher",
    "teacher_epochs",
    "student",
    "loss",
    "temperature",
    "lam",
    "transfer",
    "transfer_size",
    "pre_epochs",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "baseline",
    "latency_runs",
    "pretrain_teacher",
)


def check_distill(dcfg: Any) -> dict[str, Any]:
    """The `distill` config, checked: every key known, numbers in range (ConfigError names it)."""
    if not isinstance(dcfg, dict):
        raise ConfigError("stage=distill needs the distill group (distill=default)")
    unknown = sorted(set(dcfg) - set(KEYS))
    if unknown:
        raise ConfigError(f"distill.{unknown[0]} is not a distill key; known: {sorted(KEYS)}")
    if dcfg.get("loss") not in LOSSES:
        raise ConfigError(f"distill.loss={dcfg.get('loss')!r}: choose one of {LOSSES}")
    if not isinstance(dcfg.get("student"), dict) or not dcfg["student"].get("_target_"):
        raise ConfigError("distill.student needs a _target_ (e.g. distill/student=tiny_cnn_narrow)")
    for key, low in (
        ("epochs", 1),
        ("pre_epochs", 0),
        ("teacher_epochs", 1),
        ("batch_size", 2),
        ("latency_runs", 1),
    ):
        v = dcfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"distill.{key} must be an integer >= {low}, got {v!r}")
    for key, low, high in (("temperature", 0.0, math.inf), ("lam", 0.0, 1.0), ("lr", 0.0, 1.0)):
        v = dcfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise ConfigError(f"distill.{key} must be a number in [{low}, {high}], got {v!r}")
    if dcfg["temperature"] <= 0:
        raise ConfigError(f"distill.temperature must be > 0, got {dcfg['temperature']!r}")
    if not isinstance(dcfg.get("pretrain_teacher", False), bool):
        raise ConfigError(
            f"distill.pretrain_teacher must be true or false, got {dcfg['pretrain_teacher']!r}"
        )
    size = dcfg.get("transfer_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 2):
        raise ConfigError(f"distill.transfer_size must be null or an integer >= 2, got {size!r}")
    transfer = dcfg.get("transfer")
    if transfer != "train" and not (isinstance(transfer, dict) and transfer.get("_target_")):
        raise ConfigError(
            f"distill.transfer={transfer!r}: 'train' (the teacher's train split) or a data config "
            "with a _target_ (used unlabelled)"
        )
    return dcfg


def check_stage(cfg: dict[str, Any]) -> None:
    """stage=distill before anything loads or trains: the distill group, the student (built once
    with a dummy head; its errors name `distill.student`) and, where the teacher is trained here
    or loaded as a state_dict of it or its pretraining teaches the student's, the experiment's
    `model`; each teacher given is a classification run directory or a state_dict that loads
    into `model` (for the data's classes, when the config tells them)."""
    from fedray.models import build_model

    dcfg = check_distill(copy.deepcopy(cfg.get("distill")))
    pretrain_name = (cfg.get("pretrain") or {}).get("name")
    built = [("distill.student", dcfg["student"])]
    teacher = dcfg.get("teacher")
    members = [teacher]
    if isinstance(teacher, list | tuple):  # an ensemble: every member a run or a state_dict
        if not teacher:
            raise ConfigError("distill.teacher=[]: an ensemble needs at least one member")
        for i, member in enumerate(teacher):
            if member in (None, "", "null") or not Path(str(member)).expanduser().exists():
                raise ConfigError(f"distill.teacher[{i}]={member!r} is neither a run directory "
                                  "nor a file (an ensemble's members are runs or state_dicts)")
        members = list(teacher)
    ensemble = isinstance(teacher, list | tuple)
    sources = {  # key -> path of each teacher given (none: `model` is trained here)
        f"distill.teacher[{i}]" if ensemble else "distill.teacher": Path(str(m)).expanduser()
        for i, m in enumerate(members) if m not in (None, "", "null")
    }
    from fedray.distill.task import TEACHER_IS, check_teacher_run

    for key, path in sources.items():
        if path.is_dir():  # a segmentation or retrieval run gives no class logits to learn from
            check_teacher_run(path, f"{key}={str(path)!r}")
        elif not path.is_file():
            raise ConfigError(f"{key}={str(path)!r} does not exist: {TEACHER_IS}")
    runs = [key for key, path in sources.items() if path.is_dir()]
    if runs:  # the student learns on that run's data (its config.yaml): data=... does nothing
        from fedray.config import command_line_keys

        given = [k for k in command_line_keys() if k == "data" or k.startswith("data.")]
        if given:
            raise ConfigError(
                f"{given[0]}: {runs[0]} is a run directory, and the student learns on the data "
                "that run was trained on (its config.yaml); drop the data overrides, or give "
                "the teacher as a state_dict file to distil on other data"
            )
    states = {key: path for key, path in sources.items() if path.is_file()}
    if states or not sources or dcfg.get("pretrain_teacher"):
        built.append(("model", cfg.get("model")))
    for key, given in built:
        model = mapping(key, given)
        weights = model.get("pretrained")
        if weights not in (None, pretrain_name) and not Path(str(weights)).is_file():
            raise ConfigError(f"{key}.pretrained: {weights!r} is no weights file (nor "
                              f"{pretrain_name!r}, the pretrain stage's)")
        model = {**model, "pretrained": None}  # the architecture alone: nothing loads here
        with as_key(key):
            build_model(model, 2)
    from fedray.data.sources import classes_known
    from fedray.models import read_state_dict

    classes = classes_known(cfg.get("data"))
    for key, path in states.items():  # a state_dict of `model`, for the data's classes
        if classes is None:  # the head's size is known once the data is built
            read_state_dict(path, key, TEACHER_IS)
        else:
            teacher_from_state(path, cfg["model"], classes, key)


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    epochs: int,
    dcfg: dict[str, Any],
    seed: int,
    teacher_logits: torch.Tensor | None = None,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
    desc: str = "train",
) -> float:
    """Adam with a cosine schedule: CE on (x, y), or `distill.loss` against `teacher_logits`
    (y None: the teacher's term alone). Returns the last epoch's mean loss. Shows progress
    (`desc`, per batch, with the running loss)."""
    from fedray.progress import Progress

    n = len(x)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bs = int(dcfg["batch_size"])
    opt = torch.optim.Adam(
        model.parameters(), lr=float(dcfg["lr"]), weight_decay=float(dcfg["weight_decay"])
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * -(-n // bs)))
    y_all = None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long)
    ce = nn.CrossEntropyLoss()
    model.train()
    mean = float("nan")
    bar = Progress(total=epochs * -(-n // bs), desc=desc, unit="batch")
    for ep in range(epochs):
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for start in range(0, n, bs):
            idx = np.sort(order[start : start + bs])
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                bar.update(1)
                continue
            out = model(to_tensor_batch(x[idx]).to(device)).float()
            yb = None if y_all is None else y_all[idx].to(device)
            if teacher_logits is None:
                loss = ce(out, yb)
            else:
                t = teacher_logits[idx].to(device)
                loss = distill_loss(
                    dcfg["loss"], out, t, yb, float(dcfg["temperature"]), float(dcfg["lam"])
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(1, epoch=ep + 1, loss=total / seen)
        mean = total / max(seen, 1)
        if on_epoch is not None:
            on_epoch(ep, mean)
    bar.close()
    return mean


def transfer_set(
    dcfg: dict[str, Any], info: DatasetInfo, seed: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(images, labels or None when unlabelled, description) of the distillation transfer set."""
    from fedray.data.sources import build_dataset

    if dcfg["transfer"] == "train":
        x, y, name = (
            np.asarray(load_images(info.root, "train")),
            load_labels(info.root, "train"),
            "train",
        )
    else:
        tinfo = build_dataset(dcfg["transfer"], seed)
        if tinfo.image_size != info.image_size:
            raise ConfigError(
                f"distill.transfer.image_size={tinfo.image_size} differs from the teacher's "
                f"data ({info.image_size})"
            )
        x, y, name = np.asarray(load_images(tinfo.root, "train")), None, tinfo.name
    size = dcfg.get("transfer_size")
    if size is not None and size < len(x):
        keep = np.sort(np.random.default_rng([seed, 0x7D]).permutation(len(x))[:size])
        x, y = x[keep], None if y is None else y[keep]
    return x, y, name


def logits_shown(model: nn.Module, x: np.ndarray, device: str, desc: str) -> torch.Tensor:
    """`predict_logits` over `x`, a chunk at a time, with progress (`desc`)."""
    from fedray.fl.train import predict_logits
    from fedray.progress import Progress

    out: list[torch.Tensor] = []
    with Progress(total=len(x), desc=desc, unit="image") as bar:
        for i in range(0, len(x), 512):
            out.append(predict_logits(model, x[i : i + 512], device=device))
            bar.update(len(out[-1]))
    return torch.cat(out)


def compression_words(ratio: float, student: dict[str, Any]) -> str:
    """`ratio` (teacher / student parameters) in words; a student larger than its teacher is
    warned of: nothing is compressed."""
    if ratio >= 1:
        return f"{ratio:.1f}x fewer"
    log.warning("distill: the student (%s) has %.1fx the teacher's parameters: no compression "
                "(a smaller distill/student, or a larger teacher)",
                student.get("name") or student.get("_target_"), 1 / ratio)
    return f"{1 / ratio:.1f}x more"


def student_cfg(cfg: dict[str, Any], dcfg: dict[str, Any]) -> dict[str, Any]:
    """The student's model config, its `pretrained: <pretrain.name>` (e.g. `public`) resolved to
    the weights the experiment's pretrain stage makes for the student's own architecture (cached
    like the teacher's backbone), so a student can start where its teacher did; with
    `distill.pretrain_teacher` that pretraining is itself distilled from the pretraining of the
    experiment's `model` (fedray/pill/pretrain_teacher.py)."""
    from fedray.run import resolve_pretrained

    pretrain = cfg.get("pretrain") or {}
    if dcfg.get("pretrain_teacher"):  # the experiment's model pretrained teaches the student's
        pretrain = {**pretrain, "teacher": cfg["model"]}
    return resolve_pretrained({**cfg, "model": dcfg["student"], "pretrain": pretrain})["model"]


def run_distill(
    cfg: dict[str, Any], on_round: Callable[[dict[str, Any], Path | None], None] | None = None
) -> dict[str, Any]:
    """stage=distill: teacher -> student; returns the summary (also in summary.json)."""
    from fedray.data.sources import build_dataset
    from fedray.fl.train import evaluate, torch_device
    from fedray.metrics import MetricAccumulator
    from fedray.models import build_model

    dcfg = check_distill(copy.deepcopy(cfg.get("distill")))
    seed = int(cfg["seed"])
    device = torch_device(cfg.get("device", "auto"))
    run_dir = Path(cfg["run_dir"])
    teacher, data_cfg, data_seed, source = load_teacher(cfg, dcfg)
    if data_cfg != cfg.get("data"):
        log.info("distill: the student learns on the teacher run's data (%s), not the "
                 "experiment's", data_cfg.get("name") or data_cfg.get("_target_"))
    if data_seed != seed:  # its split (and images) are the teacher's, or val is its train
        log.info("distill: the data is built with the teacher run's seed %d (this run's seed %d "
                 "seeds the student)", data_seed, seed)
    info = build_dataset(data_cfg, data_seed)
    x = np.asarray(load_images(info.root, "train"))
    y = load_labels(info.root, "train")
    vx = np.asarray(load_images(info.root, "val"))
    vy = load_labels(info.root, "val")
    logger = RunLogger(run_dir, {**cfg, "data": data_cfg})
    t0 = time.perf_counter()
    try:
        if teacher is None:
            torch.manual_seed(seed)
            teacher = build_model(cfg["model"], info.num_classes).to(device)
            fit(teacher, x, y, int(dcfg["teacher_epochs"]), dcfg, seed + 1, device=device,
                desc="teacher")
        teacher = teacher.to(device)
        scores = MetricAccumulator(info.num_classes)
        v_logits = logits_shown(teacher, vx, device, "teacher on val")
        scores.update(v_logits, torch.as_tensor(vy).long())
        t_acc = scores.compute()
        log.info("teacher (%s): val/acc %.4f", source, t_acc["acc"])
        tx, ty, tname = transfer_set(dcfg, info, seed)
        # a fixed teacher: its logits computed once (an ensemble's can take minutes)
        t_logits = logits_shown(teacher, tx, device, "teacher on the transfer set")

        torch.manual_seed(seed)
        student = build_model(student_cfg(cfg, dcfg), info.num_classes).to(device)
        pre = int(dcfg["pre_epochs"])
        if pre:  # stage one of the two-stage recipe: the student alone on the hard labels
            fit(student, x, y, pre, dcfg, seed + 2, device=device, desc="student alone (stage 1)")
        pre_acc = (
            evaluate(student, vx, vy, info.num_classes, device=device)[0]["acc"] if pre else None
        )
        epochs = int(dcfg["epochs"])
        alone_acc: dict[int, float] = {}
        alone = None
        if dcfg["baseline"]:  # the no-teacher bar: stage two on the hard labels only
            alone = copy.deepcopy(student)

            def alone_epoch(ep: int, _loss: float) -> None:
                alone_acc[ep] = evaluate(alone, vx, vy, info.num_classes, device=device)[0]["acc"]

            fit(alone, x, y, epochs, dcfg, seed + 3, device=device, on_epoch=alone_epoch,
                desc="student alone (baseline)")
        rows: list[dict[str, Any]] = []

        def student_epoch(ep: int, loss: float) -> None:
            metrics = evaluate(student, vx, vy, info.num_classes, device=device)[0]
            row = {
                "round": ep + 1,
                "train/loss": loss,
                **{f"val/{k}": v for k, v in metrics.items()},
            }
            if ep in alone_acc:
                row["val/acc_alone"] = alone_acc[ep]
            logger.log(row)
            rows.append(row)
            if on_round is not None:
                on_round(row, None)

        fit(student, tx, ty, epochs, dcfg, seed + 3, t_logits, device, on_epoch=student_epoch,
            desc="student distilled")
        s_metrics = evaluate(student, vx, vy, info.num_classes, device=device)[0]
        a_metrics = (
            evaluate(alone, vx, vy, info.num_classes, device=device)[0] if alone is not None else {}
        )

        runs = int(dcfg["latency_runs"])
        tp = profile(teacher, info.image_size, run_dir / "teacher.pt", runs)
        sp = profile(student, info.image_size, run_dir / "student.pt", runs)
        summary: dict[str, Any] = {
            "stage": "distill",
            "teacher/source": source,
            "teacher/members": len(teacher.members) if isinstance(teacher, Ensemble) else 1,
            "transfer/name": tname,
            "transfer/size": len(tx),
            "transfer/labelled": ty is not None,
            **{f"teacher/{k}": v for k, v in tp.items()},
            "teacher/val_acc": t_acc["acc"],
            "teacher/val_top5": t_acc.get("top5"),
            **{f"student/{k}": v for k, v in sp.items()},
            "student/val_acc": s_metrics["acc"],
            "student/val_top5": s_metrics.get("top5"),
            "student/val_acc_stage1": pre_acc,
            "student_alone/val_acc": a_metrics.get("acc"),
            "student_alone/val_top5": a_metrics.get("top5"),
            "compression/params": tp["params"] / sp["params"],
            "compression/macs": tp["macs"] / max(sp["macs"], 1),
            "compression/size": tp["size_bytes"] / sp["size_bytes"],
            "speedup/latency": tp["latency_ms_p50"] / sp["latency_ms_p50"],
            **{f"val/{k}": v for k, v in s_metrics.items()},
            "val/acc_gap_to_teacher": t_acc["acc"] - s_metrics["acc"],
            "rounds": epochs,
            "train/loss": rows[-1]["train/loss"],
            "time/train_s": time.perf_counter() - t0,
        }
        if a_metrics:
            summary["val/acc_gain_over_alone"] = s_metrics["acc"] - a_metrics["acc"]
        logger.summary(summary)
        log.info(
            "distill: teacher %.4f (%d params)  student %.4f (%d params, %s)  alone %s",
            t_acc["acc"],
            tp["params"],
            s_metrics["acc"],
            sp["params"],
            compression_words(summary["compression/params"], dcfg["student"]),
            "-" if not a_metrics else f"{a_metrics['acc']:.4f}",
        )
        return summary
    finally:
        logger.close()
