"""run(cfg) -> metrics: the one entry that the CLI, tests and Tune trials all call.

Size: the one entry point and its runners (federated, isolated, centralized), which
share the summary and plot writer at the bottom.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedray.config import ConfigError
from fedray.fl.resume import experiment_hash, find_resume_dir, finished_summary
from fedray.logging import RunLogger, setup_console_logging

log = logging.getLogger("fedray")

OnRound = Callable[[dict[str, Any], Path | None], None]
STAGES = ("federated", "isolated", "centralized", "pretrain", "synth", "distill")
# any other stage is a config group naming its own `_target_` (cfg -> metrics), e.g. stage=detect
# with +detect=yolov3_tiny: the application's stages plug in without fedray importing them

def stage_target(cfg: dict[str, Any]) -> str | None:
    """The `_target_` of the config group named like the stage (a plug-in stage), if any."""
    group = cfg.get(str(cfg.get("stage")))
    return group.get("_target_") if isinstance(group, dict) else None


def _validate(cfg: dict[str, Any]) -> None:
    stage = cfg.get("stage")
    if stage not in STAGES and not stage_target(cfg):
        conf = Path(__file__).resolve().parents[1] / "conf"  # the shipped groups
        named = str(stage).isidentifier()
        shipped = sorted(p.stem for p in (conf / str(stage)).glob("*.yaml")) if named else []
        experiments = [p.stem for p in (conf / "experiment").glob("*.yaml")
                       if f"stage: {stage}" in p.read_text()] if shipped else []
        if shipped:  # a plug-in stage whose config group was not added
            how = f"add its config group: +{stage}={shipped[0]}" + (
                f" (or +experiment={sorted(experiments)[0]})" if experiments else "")
            raise ConfigError(f"stage={stage!r}: {how}")
        raise ConfigError(
            f"stage={stage!r} is not a known stage; choose one of {STAGES}, or add a "
            f"config group of that name with a _target_ (e.g. stage=detect +detect=yolov3_tiny)"
        )
    if not cfg.get("run_dir"):
        raise ConfigError("run_dir is not set (launch.py sets it to Hydra's output directory)")


def run(cfg: dict[str, Any], on_round: OnRound | None = None) -> dict[str, Any]:
    """Run the experiment `cfg` (a plain, resolved dict) and return its final metrics.

    `on_round(row, checkpoint_path)` is called after every round (Tune reports through it).
    """
    from fedray.data.sources import build_dataset
    from fedray.malloc import keep_freed_memory
    from fedray.models import new_run
    from fedray.validate import validate

    setup_console_logging()
    new_run()  # a model's left-out keys are warned of once per run
    _validate(cfg)
    validate(cfg)  # every key that can be wrong, before Ray, a data build or pretraining starts
    keep_freed_memory()  # training steps reuse their freed buffers instead of faulting them in
    cfg = dict(cfg)
    cfg["_config_hash"] = experiment_hash(cfg)
    resume_dir = find_resume_dir(cfg)
    if resume_dir is not None:
        cfg["run_dir"] = str(resume_dir)
        done = finished_summary(cfg, resume_dir)  # all its rounds ran: no data, Ray or pool
        if done is not None:
            return done
    run_dir = Path(cfg["run_dir"])
    log.info("run %s (%s) -> %s", cfg.get("name"), cfg["stage"], run_dir)
    if cfg["stage"] == "synth":
        return _run_synth(cfg, run_dir)
    if cfg["stage"] not in STAGES:  # a plug-in stage: its group's callable does the whole run
        from hydra.utils import get_method

        return get_method(stage_target(cfg))(cfg)
    if cfg["stage"] == "distill":  # teacher run -> small student (fedray/distill/)
        from fedray.distill.stage import run_distill

        return run_distill(cfg, on_round)
    if cfg["stage"] == "pretrain":
        metrics = run_pretrain_stage(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    t0 = time.perf_counter()
    info = build_dataset(cfg["data"], int(cfg["seed"]))
    log.info(
        "dataset %s: %d classes, %s at %s (%.1fs)",
        info.name,
        info.num_classes,
        info.splits,
        info.root,
        time.perf_counter() - t0,
    )
    dealt = None
    if cfg["stage"] in ("federated", "isolated"):  # a partition the data cannot deal fails
        dealt = _deal(cfg, info)  # here, before pretraining and Ray start
        from fedray.privacy import check_dealt

        check_dealt(cfg, dealt[2])  # secure aggregation's ring holds the dealt shards' weights
    cfg = resolve_pretrained(cfg)  # after the private data: a bad data.root fails first
    if dealt is not None:
        return _run_federated(cfg, info, dealt, run_dir, resume_dir, on_round)
    return _run_centralized(cfg, info, run_dir, on_round)


def _run_synth(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """stage=synth: build (or find) the dataset alone and report what was made.

    A dataset config may name a `describe` callable (DatasetInfo -> dict) that lists what its
    build wrote (the synthetic pills' contact sheet, manifest, YOLO scenes).
    """
    from hydra.utils import get_method

    from fedray.data.sources import build_dataset

    describe = cfg["data"].get("describe")
    if not describe:
        raise ConfigError(
            f"stage=synth builds a synthesized dataset; data={cfg['data'].get('name')} has no "
            "`describe` (use data=synthetic)"
        )
    summary = get_method(describe)(build_dataset(cfg["data"], int(cfg["seed"])))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for key in ("contact_sheet", "detection_data_yaml", "manifest", "catalog"):
        if summary.get(key):
            log.info("%s: %s", key, summary[key])
    return summary


def _pretrain_resolver(cfg: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The `pretrain._target_` callable (cfg -> cfg with model.pretrained a path), if any."""
    from hydra.utils import get_method

    target = (cfg.get("pretrain") or {}).get("_target_")
    return get_method(target) if target else None


def resolve_pretrained(cfg: dict[str, Any]) -> dict[str, Any]:
    """`model.pretrained: <pretrain.name>` -> the weights path that the pretrain stage produces.

    Any other value (a local path, null) is left as it is; the pretraining itself is the
    `pretrain` group's `_target_` (the pill application's public-pill pretraining by default).
    """
    pretrained = cfg["model"].get("pretrained")
    name = (cfg.get("pretrain") or {}).get("name")
    if pretrained is None or pretrained != name:
        return cfg
    resolver = _pretrain_resolver(cfg)
    if resolver is None:
        raise ConfigError(f"model.pretrained={pretrained!r} but the pretrain group has no _target_")
    return resolver(cfg)


def run_pretrain_stage(cfg: dict[str, Any]) -> dict[str, Any]:
    """stage=pretrain: build/train (or find) the pretrained weights and report them."""
    resolver = _pretrain_resolver(cfg)
    if resolver is None:
        raise ConfigError("stage=pretrain needs a pretrain group with a _target_ (pretrain=public)")
    path = Path(resolver(cfg)["model"]["pretrained"])
    report = path.parent / "metrics.json"
    metrics = json.loads(report.read_text()) if report.exists() else {}
    return {**metrics, "weights": str(path)}


def _deal(cfg: dict[str, Any], info) -> tuple[Any, np.ndarray, list[np.ndarray]]:
    """(task, partition keys of the train split, each client's sample indices)."""
    from fedray.data.partition import partition

    task = _build_task(cfg)
    labels = task.partition_keys(info.root, "train")  # class labels, or groups (sites, devices)
    return task, labels, partition(labels, cfg["partition"], int(cfg["fl"]["num_clients"]),
                                   int(cfg["seed"]))


def _run_federated(
    cfg: dict[str, Any], info, dealt: tuple, run_dir: Path, resume_dir: Path | None,
    on_round: OnRound | None,
) -> dict:
    from fedray.fl.inprocess import InProcessBoot, backend

    boot: Any = InProcessBoot()  # in-process clients need nothing started (not even Ray imported)
    if backend(cfg) == "ray":
        from fedray.fl.pool import PoolBoot, ensure_ray, pool_size
        from fedray.fl.server import clients_per_round

        # Ray and the client actors' processes start in a thread while this one partitions the
        # data and builds the server (fedray/fl/pool.py:PoolBoot)
        boot = PoolBoot(
            lambda: ensure_ray(cfg["ray"]),
            cfg["ray"],
            clients_per_round(cfg["fl"]),
            cfg["client"]["optimizer"],
            pool_size,
        )
    try:
        return _run_federated_rounds(cfg, info, dealt, run_dir, resume_dir, on_round, boot)
    finally:
        boot.close()  # and stops Ray if the boot started it


def _run_federated_rounds(cfg: dict[str, Any], info, dealt: tuple, run_dir: Path,
                          resume_dir: Path | None, on_round: OnRound | None, boot) -> dict:
    from fedray.data.partition import partition_matrix, save_partition_heatmap
    from fedray.fl.checkpoint import CHECKPOINT, load_checkpoint
    from fedray.fl.scores import group_metrics, own_mean, per_client_scores
    from fedray.fl.server import FederatedServer

    task, labels, parts = dealt
    num_clients = int(cfg["fl"]["num_clients"])
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if resume_dir is not None else None  # read once
    logger = RunLogger(run_dir, cfg, resume_rows=ckpt["rows"] if ckpt is not None else None)
    try:
        by_label = task.partition_by == "label"
        keys = info.num_classes if by_label else int(labels.max()) + 1
        matrix = partition_matrix(labels, parts, keys)
        server = FederatedServer(cfg, info, parts, logger, before_bind=boot.wait_ray)
        if ckpt is not None:
            server.restore(ckpt)
            log.info("resuming after round %d from %s", server.start_round, ckpt_path)
        t0 = time.perf_counter()
        ckpt = ckpt_path if cfg["fl"].get("checkpoint", True) else None
        last = server.run(cfg["ray"], ckpt, on_round, actors=boot.result())
        boot.release()  # Ray stops in its thread while this one evaluates and draws
        metric = task.metric
        groups: dict[str, float] = {}  # per site/device val metrics, when the data has groups
        if server.isolated:  # each client's own model on the global val set
            evals = {c: server.evaluate(p) for c, p in sorted(server.client_params.items())}
            per_client = {c: m[metric] for c, (m, _) in evals.items()}
            metrics = {
                k: float(np.mean([m[k] for m, _ in evals.values()])) for k in last_keys(evals)
            }
            cm = sum(c for _, c in evals.values()) if task.confusion else None
            for c, p in sorted(server.client_params.items()):  # and on each group's val
                own = group_metrics(server, p)
                groups.update({f"client/{c}/val/{k}": v for k, v in own.items()})
        else:  # the global model (fl.local: each client's own) on each client's own classes
            metrics, cm = server.evaluate()
            per_client = per_client_scores(server)
            groups = {f"val/{k}": v for k, v in group_metrics(server).items()}
            if server.local is not None:
                groups[f"val_local/{metric}"] = own_mean(server, sorted(per_client), per_client)
        summary = {f"val/{k}": v for k, v in metrics.items()}
        summary.update(groups)
        summary.update(server.head_init_metrics)
        summary.update({f"client/{c}/val_{metric}": a for c, a in per_client.items()})
        summary[f"val/{metric}_client_min"] = min(per_client.values())
        summary[f"val/{metric}_client_max"] = max(per_client.values())
        if cfg["logger"].get("plots", True) and metric == "acc":  # the plot's axis: accuracy
            from fedray.plots import plot_per_client

            plot_per_client(per_client, run_dir / "per_client_acc.png")
        summary.update(
            {
                "rounds": int(last.get("round", server.start_round)),  # dp.max_epsilon: fewer
                "comm/bytes_total": server.bytes_total,
                "time/train_s": time.perf_counter() - t0,
                "train/loss": last.get("train/loss"),
                "num_clients": num_clients,
                "stage": cfg["stage"],
            }
        )
        spent = ("dp/clip_norm", "val/backdoor_success")  # and privacy/*: at the run's end
        summary.update({k: v for k, v in last.items() if k.startswith("privacy/") or k in spent})
        if cfg["logger"].get("plots", True):  # drawn here, not before round 1: start-up time
            save_partition_heatmap(
                matrix,
                run_dir / "partition.png",
                info.class_names if by_label else [f"group {g}" for g in range(keys)],
                title=f"{cfg['partition'].get('name')} partition",
            )
        _finish(cfg, info, run_dir, logger, summary, cm, matrix, task)
        return summary
    finally:
        logger.close()


def _build_task(cfg: dict[str, Any]):
    """The config's task (classification when it names none), checked against client.augment."""
    from fedray.tasks import build_task

    task = build_task(cfg.get("task"))
    if cfg["client"].get("augment") and not task.augments:
        raise ConfigError(
            f"client.augment=true turns and flips the images only, but the {task.name} task's "
            "targets would have to turn with them: set client.augment=false"
        )
    return task


def _group_metrics(model, vx, vy, info, task, cached: int) -> dict[str, float]:
    """`val/group<g>/<metric>` of a model on each group's val samples (sites, devices), if any."""
    from fedray.data.datasets import load_groups
    from fedray.fl.train import evaluate

    groups = load_groups(info.root, "val")
    out: dict[str, float] = {}
    for g in np.unique(groups) if groups is not None else []:
        idx = np.flatnonzero(groups == g)
        m, _ = evaluate(model, vx[idx], vy[idx], info.num_classes, cached=cached, task=task)
        out.update({f"val/group{int(g)}/{k}": v for k, v in m.items()})
    return out


def last_keys(evals: dict) -> list[str]:
    """Metric names common to every client's evaluation."""
    return list(next(iter(evals.values()))[0])


def _run_centralized(cfg: dict[str, Any], info, run_dir: Path, on_round: OnRound | None) -> dict:
    """All data pooled, same model, same budget (rounds x local epochs), no Ray."""
    import torch
    from hydra.utils import instantiate

    from fedray.data.datasets import load_images
    from fedray.fl.head_init import check_head_init, feature_stats, solve_head
    from fedray.fl.server import check_augment
    from fedray.fl.train import (
        augment_turns_flips,
        evaluate,
        extract_features,
        round_lr_scale,
        set_params,
        train_local,
    )
    from fedray.models import build_model, frozen_prefix, trainable_names

    seed = int(cfg["seed"])
    task = _build_task(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg["model"], info.num_classes)
    trainable = trainable_names(model, cfg["fl"]["trainable"])
    cached = frozen_prefix(model, trainable) if cfg["fl"]["cache_features"] else 0
    check_augment(cfg, cached)
    x = np.asarray(load_images(info.root, "train"))
    y = np.array(task.load_targets(info.root, "train"))
    vx = np.asarray(load_images(info.root, "val"))
    vy = np.array(task.load_targets(info.root, "val"))
    if cached:
        precision = cfg["fl"].get("cache_precision", "fp32")
        x = extract_features(model, x, upto=cached, precision=precision)
        vx = extract_features(model, vx, upto=cached, precision=precision)
    head_init: dict[str, Any] = {}
    if check_head_init(cfg["fl"], model, trainable, cached) == "ridge":  # same solve, pooled data
        fl = cfg["fl"]
        stats = feature_stats(x, y, info.num_classes)
        set_params(model, solve_head([stats], model, fl["ridge_lambda"], fl["ridge_scale"]))
        acc = evaluate(model, vx, vy, info.num_classes, cached=cached)[0]["acc"]
        head_init = {"head_init/val_acc": acc}
        log.info("head init (ridge) on the pooled data: val/acc %.4f", acc)
    logger = RunLogger(run_dir, cfg)
    client = cfg["client"]
    opt = instantiate(client["optimizer"])
    rounds = int(cfg["fl"]["rounds"])
    t0 = time.perf_counter()
    try:
        for r in range(rounds):
            t = time.perf_counter()
            stats = train_local(
                model,
                x,
                y,
                trainable,
                int(client["epochs"]),
                int(client["batch_size"]),
                opt,
                seed=seed * 1000 + r,
                cached=cached,
                augment=augment_turns_flips if client.get("augment") and not cached else None,
                lr_scale=round_lr_scale(str(client.get("lr_schedule", "constant")), r, rounds),
                task=task,
            )
            metrics, cm = evaluate(model, vx, vy, info.num_classes, cached=cached, task=task)
            row = {
                "round": r + 1,
                "train/loss": stats["loss"],
                **{f"val/{k}": v for k, v in metrics.items()},
                "comm/bytes_up": 0,
                "comm/bytes_down": 0,
                "comm/bytes_total": 0,
                "time/round_s": time.perf_counter() - t,
            }
            logger.log(row)
            if on_round is not None:
                on_round(row, None)
            log.info(
                "epoch-round %d/%d  %s %.4f  train/loss %.4f",
                r + 1,
                rounds,
                task.rank_key,
                metrics[task.metric],
                stats["loss"],
            )
        if cfg["fl"].get("checkpoint", True):  # the model, as a federated run's: identify,
            # export and a distillation teacher load it (a centralized run does not resume)
            from fedray.fl.checkpoint import CHECKPOINT, save_checkpoint
            from fedray.fl.train import get_params, travel_names

            save_checkpoint(run_dir / CHECKPOINT, {
                "round": rounds, "params": get_params(model, travel_names(model, trainable)),
                "stage": "centralized", "config_hash": cfg.get("_config_hash"),
            })
        summary = {f"val/{k}": v for k, v in metrics.items()}
        summary.update(_group_metrics(model, vx, vy, info, task, cached))
        summary.update(head_init)
        summary.update(
            {
                "rounds": rounds,
                "comm/bytes_total": 0,
                "stage": "centralized",
                "time/train_s": time.perf_counter() - t0,
                "train/loss": stats["loss"],
            }
        )
        _finish(cfg, info, run_dir, logger, summary, cm, None, task)
        return summary
    finally:
        logger.close()


def _finish(
    cfg,
    info,
    run_dir: Path,
    logger: RunLogger,
    summary: dict,
    cm: np.ndarray | None,
    matrix: np.ndarray | None,
    task=None,
) -> None:
    from fedray.metrics import most_confused

    confusion = task is None or task.confusion  # classification: confusion matrix and plot
    metric, rank_key = ("acc", "val/acc") if task is None else (task.metric, task.rank_key)
    if confusion:
        confused = most_confused(cm, info.class_names, k=5)
        summary["most_confused"] = [f"{a} -> {b}: {n}" for a, b, n in confused]
        np.savetxt(run_dir / "confusion_matrix.csv", cm, fmt="%d", delimiter=",")
    if cfg["logger"].get("plots", True):
        from fedray.plots import plot_confusion_matrix, plot_curves

        base_key = f"val_base/{metric}"  # a strategy's base rule alone (FedDF: before distilling)
        with_base = any(base_key in row for row in logger.rows)
        paths = {}
        if logger.rows:  # none when no round ran (dp.sampling=poisson drew nobody each round)
            paths[f"plots/{metric}_vs_round"] = plot_curves(
                logger.rows,
                run_dir / f"{metric}_vs_round.png",
                x="round",
                ys=(rank_key, base_key) if with_base else (rank_key,),
                labels={
                    rank_key: f"{rank_key} ({(cfg.get('strategy') or {}).get('name')})",
                    base_key: f"{rank_key}, the base rule's aggregate of the same round",
                }
                if with_base
                else None,
            )
        if any(row.get("comm/bytes_total") for row in logger.rows):  # none sent: no such plot
            paths[f"plots/{metric}_vs_bytes"] = plot_curves(
                logger.rows,
                run_dir / f"{metric}_vs_bytes.png",
                x="comm/bytes_total",
                ys=(rank_key,),
                xlabel="cumulative bytes communicated",
            )
        if confusion:
            paths = {
                "plots/confusion": plot_confusion_matrix(
                    cm, info.class_names, run_dir / "confusion.png"
                ),
                **paths,
            }
        if matrix is not None:
            paths["plots/partition"] = run_dir / "partition.png"
        for key, path in paths.items():
            logger.log_image(key, path)
    logger.summary(summary)
    log.info("done: %s %.4f -> %s", rank_key, summary.get(rank_key, float("nan")), run_dir)
