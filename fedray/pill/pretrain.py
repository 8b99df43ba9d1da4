"""Pretraining on the public pill set: the offline stand-in for ImageNet weights.

The public set is built exactly like the private one but from disjoint catalog ids (or disjoint
toy classes), so the backbone never sees a private class. The full model trains centrally; the
weights land in the dataset cache under `pretrain_key(cfg)`: the public set's own normalised
config, the model as pretraining builds it and the recipe, nothing else. So every experiment whose
public set, model and recipe agree shares one pretraining, whatever its private data.

A long pretraining shows progress (a bar on a terminal, else a line per epoch with the loss, the
learning rate and, every `pretrain.eval_every` epochs, the public val accuracy; the same rows go to
metrics.jsonl in the cache entry and to W&B when the run logs there), and checkpoints every
`pretrain.checkpoint_every` epochs into `.pretrain-<key>.partial/` beside the entry: a killed
pretraining resumes from there to the weights an uninterrupted one would have made.

Size: one stage (public-set config, cache key, training loop with checkpoints and
resume, report); the key and the loop must agree on what decides the weights.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.config import ConfigError
from fedray.data.datasets import cached_build, config_hash, load_images, load_labels
from fedray.data.sources import NOT_BUILDER_KEYS, build_dataset, cache_dir_for
from fedray.pill.pretrain_record import EpochLog, load_state, save_state
from fedray.pill.pretrain_swa import Averager, check_swa, swa_knobs
from fedray.pill.pretrain_teacher import (
    TEACHER_KEYS,
    load_teacher,
    taught_loss,
    teacher_cfg,
    teacher_knobs,
    teacher_recipe,
)

log = logging.getLogger("fedray")
WEIGHTS = "model.pt"
# Bump when the training loop would make other weights from the same key.
RECIPE_VERSION = 2
# pretrain keys that choose how often to report or save, or name the stage: never the weights
_NOT_IN_KEY = ("_target_", "name", "data", "eval_every", "checkpoint_every", "taps", "pool",
               "seed", *TEACHER_KEYS)  # the teacher enters the key as its own key (teacher_recipe)
# recipe knobs that are off at null, and the keys they drop from the cache key when off
_OFF_KNOBS = {"mix": ("mix", "mix_alpha"), "swa": ("swa",)}
# data keys that choose where or how fast a dataset is built, never its bytes
_DATA_NOT_IN_KEY = (*NOT_BUILDER_KEYS, "workers")
# Called after each epoch (and its checkpoint) with the number of epochs done; tests use it to
# interrupt a pretraining the way a kill would.
EpochHook = Callable[[int], None]


def public_data_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """The public dataset's config.

    `pretrain.data` with a `_target_` is a dataset config of its own (e.g. the synthetic public
    pills while the private data is imported); otherwise it overlays the main data config together
    with that source's `data.public_set` (disjoint classes: synthetic pills with offset ids, other
    toy classes). The public set is cached beside the private data (`data.cache_dir`).
    """
    extra = dict(cfg["pretrain"].get("data") or {})
    data = cfg["data"]
    here = {"cache_dir": data.get("cache_dir")}
    if "_target_" in extra:
        return {**here, **extra}
    public = data.get("public_set") or {}
    if "_target_" in public:  # another source (imported data pretrains on synthetic pills)
        return {**here, **public, "image_size": data.get("image_size", 64), **extra}
    if not data.get("public_set"):
        raise ConfigError(
            f"data={data.get('name')} has no public pill set (data.public_set) to pretrain on; "
            "set pretrain.data to a dataset config (e.g. {_target_: "
            "fedray.pill.synth.build_synthetic, name: synthetic, public: true}) or "
            "model.pretrained to a local weights file"
        )
    return {**data, **data["public_set"], **extra, "public_set": None}


def public_set_key(data_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides the public set's bytes: its builder's normalised config and code version.

    The synthetic pills are normalised by their own builder (defaults filled in, so a key left out
    and the same key spelt out agree) and carry its code fingerprint; any other builder's config
    counts as given, with its module's VERSION if it has one. Where and how fast it is built
    (cache_dir, workers) and what describes it are left out.
    """
    from fedray.targets import import_target

    target = data_cfg.get("_target_")
    fn = import_target("pretrain.data._target_ (the public set's)", str(target))
    given = {k: v for k, v in data_cfg.items() if k not in _DATA_NOT_IN_KEY}
    from fedray.pill.synth import build_synthetic, code_fingerprint, synth_config

    if fn is build_synthetic:
        normalised = synth_config({k: v for k, v in data_cfg.items() if k not in NOT_BUILDER_KEYS})
        given = {k: v for k, v in normalised.items() if k not in _DATA_NOT_IN_KEY}
        version: Any = code_fingerprint()
    else:
        version = getattr(sys.modules.get(getattr(fn, "__module__", ""), None), "VERSION", None)
    return {"_target_": str(target), **given, "seed": int(seed), "version": version}


def pretrain_head(cfg: dict[str, Any]) -> tuple[Any, str]:
    """The head the backbone is pretrained under: (taps, pool).

    `pretrain.taps: model` takes the private model's `model.taps` (null there: the plain head on
    the last block), so the blocks the private head reads are the ones pretraining trains to tell
    pills apart; a list of block indices or null chooses them outright. `pretrain.pool` pools each
    tap (avg by default).
    """
    from fedray.models.views import POOLS

    pcfg = cfg["pretrain"]
    taps = pcfg.get("taps")
    if taps == "model":
        taps = cfg["model"].get("taps")
    pool = pcfg.get("pool") or "avg"
    if pool not in POOLS:
        raise ConfigError(f"pretrain.pool={pool!r}: choose one of {POOLS}")
    if taps is None:
        pool = "avg"  # the plain head pools its own way: nothing to choose
    return (list(taps) if isinstance(taps, list | tuple) else taps), pool


def pretrain_model_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model config pretraining builds: the private model without its views or MLP head,
    under the pretraining head (`pretrain_head`) and dropout (`pretrain.dropout`; null: the
    model's own)."""
    taps, pool = pretrain_head(cfg)
    return {
        # the private head's MLP width (model.hidden) is the private head's, like its views
        **{k: v for k, v in cfg["model"].items() if k != "hidden"},
        "pretrained": None,
        # augmentation turns the images already; turned and zoomed views are the private head's
        "turns": 1,
        "zooms": None,
        "taps": taps,
        "pool": pool,
        "dropout": cfg["pretrain"].get("dropout"),
    }


def model_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model as pretraining builds it, canonical: its label and weights path aside, and a key
    spelt at its builder's default dropped (`width: 1.0` and no width are one network, as are
    `options: {}` and no options where the builder's default is None)."""
    from fedray.models import target_params

    model = {k: v for k, v in pretrain_model_cfg(cfg).items() if k not in ("name", "pretrained")}
    params = target_params(model.get("_target_"))

    def at_default(k: str, v: Any) -> bool:  # an empty {} / [] is the builder's None default
        d = params[k].default
        return (type(d) is type(v) and d == v) or (d is None and v in ({}, []))

    return {k: v for k, v in model.items() if not (k in params and at_default(k, v))}


def pretrain_seed(cfg: dict[str, Any]) -> int:
    """The pretraining's seed (its public set, initialisation and batch order): `pretrain.seed`,
    or the run's own when that is null. Another seed is another backbone for the same private
    data: the members of an ensemble."""
    seed = (cfg.get("pretrain") or {}).get("seed")
    return int(cfg["seed"] if seed is None else seed)


def pretrain_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the pretrained weights, and nothing else (the cache key).

    The public set (`public_set_key`), the model as pretraining builds it (`model_key`) and the
    recipe (`precision: auto` as what it resolves to on the device it trains on: a bf16 and an
    fp32 backbone are different weights); not the private data, not how often progress is
    reported or saved, not the device otherwise (a GPU's pretraining serves a CPU run).
    """
    from fedray.fl.train import resolve_precision, torch_device

    seed = pretrain_seed(cfg)
    pcfg = cfg["pretrain"]
    model = model_key(cfg)
    recipe = {k: v for k, v in pcfg.items() if k not in _NOT_IN_KEY}
    for knob, keys in _OFF_KNOBS.items():  # off: the key of a recipe that never had the knob
        if recipe.get(knob) is None:
            recipe = {k: v for k, v in recipe.items() if k not in keys}
    recipe["precision"] = resolve_precision(pcfg.get("precision", "fp32"), "pretrain.precision",
                                            torch_device(cfg.get("device", "auto")))
    recipe.update(teacher_recipe(cfg, lambda tcfg: config_hash(pretrain_key(tcfg))))
    return {
        "public_set": public_set_key(public_data_cfg(cfg), seed),
        "model": model,
        "recipe": recipe,
        "seed": seed,
        "version": RECIPE_VERSION,
    }


def check_pretrain(cfg: dict[str, Any]) -> None:
    """Validate the pretraining without running it: recipe values, the public set, the model."""
    from fedray.checks import as_key, boolean, choice, mapping, number
    from fedray.fl.train import MIXES, SCHEDULES
    from fedray.models import build_model
    from fedray.validate import check_optimizer

    pcfg = mapping("pretrain", cfg.get("pretrain"))
    number("pretrain.epochs", pcfg.get("epochs"), 1, integer=True)
    number("pretrain.seed", pcfg.get("seed"), 0, integer=True, optional=True)
    number("pretrain.batch_size", pcfg.get("batch_size"), 1, integer=True)
    number("pretrain.eval_every", pcfg.get("eval_every", 10), 1, integer=True)
    number("pretrain.checkpoint_every", pcfg.get("checkpoint_every", 4), 1, integer=True)
    number("pretrain.label_smoothing", pcfg.get("label_smoothing", 0.0), 0, 1, high_open=True)
    number("pretrain.dropout", pcfg.get("dropout"), 0, 1, high_open=True, optional=True)
    boolean("pretrain.augment", pcfg.get("augment", True))
    choice("pretrain.schedule", pcfg.get("schedule", "cosine"), SCHEDULES)
    choice("pretrain.mix", pcfg.get("mix"), (None, *MIXES))
    number("pretrain.mix_alpha", pcfg.get("mix_alpha", 1.0), 0, low_open=True)
    check_swa(pcfg)
    taps = pcfg.get("taps")
    if taps not in (None, "model") and not (
        isinstance(taps, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in taps)
    ):
        raise ConfigError(f"pretrain.taps: {taps!r} is not model, null or a list of block indices")
    check_optimizer(pcfg.get("optimizer"), "pretrain.optimizer")
    pretrain_key(cfg)  # the public set's config (its builder's checks), precision, pool
    build_model(pretrain_model_cfg(cfg), 2)  # the pretraining head's taps fit the backbone
    tcfg = teacher_cfg(cfg)
    if tcfg is not None:
        with as_key("pretrain.teacher"):
            build_model(pretrain_model_cfg(tcfg), 2)  # the teacher is a model that builds


# Public batches are drawn at random: from an array in RAM they cost nothing, from a memory map
# ~10 ms each (page faults on every image). Sets up to this size are read into RAM first.
IN_MEMORY_BYTES = 2 << 30


def in_memory(images: np.ndarray) -> np.ndarray:
    """`images` read into RAM when they fit under IN_MEMORY_BYTES, else the memory map as is."""
    return np.array(images) if images.nbytes <= IN_MEMORY_BYTES else np.asarray(images)


def _train(
    cfg: dict[str, Any], root: Path, partial: Path, key_hash: str, on_epoch: EpochHook | None
) -> None:
    """Train the public model into `root`, checkpointing into `partial` (and resuming from it).

    The loop is `fedray.fl.train.train_local`'s, step for step (same seeds, order, schedule), cut
    at epoch boundaries: an uninterrupted run and a resumed one make the same weights.
    """
    from hydra.utils import instantiate

    from fedray.data.datasets import to_tensor_batch
    from fedray.fl.train import (
        augment_turns_flips,
        autocast,
        batch_mixer,
        evaluate,
        freeze_except,
        make_schedule,
        resolve_precision,
        torch_device,
    )
    from fedray.models import build_model
    from fedray.progress import Progress

    pcfg = cfg["pretrain"]
    seed = pretrain_seed(cfg)
    info = build_dataset(public_data_cfg(cfg), seed)
    device = torch_device(cfg.get("device", "auto"))
    torch.manual_seed(seed)
    model_cfg = pretrain_model_cfg(cfg)
    model = build_model(model_cfg, info.num_classes).to(device)
    x = in_memory(load_images(info.root, "train"))  # random batches from RAM, not the page cache
    y = load_labels(info.root, "train")
    teacher = load_teacher(cfg, info.num_classes)  # pretrained first if not cached
    if teacher is not None:
        teacher.to(device)
    temperature, lam = teacher_knobs(pcfg)
    vx = np.asarray(load_images(info.root, "val"))
    vy = load_labels(info.root, "val")
    epochs, batch_size = int(pcfg["epochs"]), int(pcfg["batch_size"])
    eval_every = int(pcfg.get("eval_every", 10))
    checkpoint_every = int(pcfg.get("checkpoint_every", 4))
    augment = augment_turns_flips if pcfg.get("augment", True) else None
    mixer = batch_mixer(pcfg.get("mix"), float(pcfg.get("mix_alpha", 1.0)), info.num_classes)
    precision = resolve_precision(pcfg.get("precision", "fp32"), "pretrain.precision", device)
    n = len(y)
    steps = -(-n // batch_size)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    names = [k for k, _ in model.named_parameters()]
    freeze_except(model, names)
    optimizer = instantiate(pcfg["optimizer"])([p for _, p in model.named_parameters()])
    swa = swa_knobs(pcfg)
    scheduler = make_schedule(optimizer, str(pcfg.get("schedule", "cosine")), epochs * steps, swa)
    averager = Averager(model, swa[0], epochs) if swa is not None else None
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(pcfg.get("label_smoothing", 0.0)))
    y_all = torch.as_tensor(np.asarray(y), dtype=torch.long).to(device)
    start, total, seen, spent, rows = 0, 0.0, 0, 0.0, []

    state = load_state(partial, key_hash)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if averager is not None:
            averager.load_state_dict(state["swa"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        start, total, seen = int(state["epoch"]), float(state["total"]), int(state["seen"])
        spent, rows = float(state["seconds"]), list(state["rows"])
        log.info("pretraining: resuming after epoch %d/%d from %s", start, epochs, partial)
    else:
        log.info(
            "pretraining %s on the public set (%d classes, %d images) for %d epochs",
            model_cfg.get("name"), info.num_classes, n, epochs,
        )
    epoch_log = EpochLog(cfg, root, key_hash, rows)
    t0 = time.perf_counter() - spent
    try:
        with Progress(epochs * steps, "pretrain", unit="step") as bar:
            bar.update(start * steps)
            for epoch in range(start, epochs):
                t_epoch = time.perf_counter()
                epoch_loss, epoch_seen = 0.0, 0
                order = rng.permutation(n)
                for first in range(0, n, batch_size):
                    idx = np.sort(order[first : first + batch_size])  # sequential mmap reads
                    batch = x[idx]
                    if augment is not None:
                        batch = augment(batch, rng)
                    inputs = to_tensor_batch(batch).to(device, non_blocking=True)
                    targets = y_all[idx]
                    if mixer is not None:
                        inputs, targets = mixer(inputs, targets)
                    with autocast(precision, device):
                        logits = model(inputs)
                    loss = loss_fn(logits.float(), targets)
                    if teacher is not None:
                        with torch.no_grad(), autocast(precision, device):
                            taught = teacher(inputs).float()
                        loss = taught_loss(logits.float(), taught, loss, temperature, lam)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    value = float(loss.detach())
                    total += value * len(idx)
                    seen += len(idx)
                    epoch_loss += value * len(idx)
                    epoch_seen += len(idx)
                    bar.update(1, epoch=epoch + 1, loss=value)
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "pretrain/loss": epoch_loss / max(epoch_seen, 1),
                    "pretrain/lr": float(optimizer.param_groups[0]["lr"]),
                }
                done = epoch + 1
                if averager is not None:
                    averager.epoch_done(model, done)
                if done % eval_every == 0 and done < epochs:  # the last epoch is scored below
                    row["pretrain/val_acc"] = evaluate(
                        model, vx, vy, info.num_classes, device=device)[0]["acc"]
                row["time/epoch_s"] = time.perf_counter() - t_epoch
                epoch_log.log(row)
                log.info(
                    "pretrain epoch %d/%d  loss %.4f  lr %.3g%s  %.1fs",
                    done, epochs, row["pretrain/loss"], row["pretrain/lr"],
                    f"  val/acc {row['pretrain/val_acc']:.4f}" if "pretrain/val_acc" in row else "",
                    row["time/epoch_s"],
                )
                if done % checkpoint_every == 0 and done < epochs:
                    save_state(partial, {
                        "key": key_hash,
                        "epoch": done,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "swa": averager.state_dict() if averager is not None else None,
                        "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        "total": total,
                        "seen": seen,
                        "seconds": time.perf_counter() - t0,
                        "rows": epoch_log.rows,
                    })
                if on_epoch is not None:
                    on_epoch(done)
        final = {"epoch": epochs}
        if averager is not None:  # the last weights' score beside the average's
            final["pretrain/val_acc_last"] = evaluate(
                model, vx, vy, info.num_classes, device=device)[0]["acc"]
            model = averager.finish(x, device)
        metrics, _ = evaluate(model, vx, vy, info.num_classes, device=device)
        final["pretrain/val_acc"] = metrics["acc"]
        if epoch_log.wandb is not None:
            epoch_log.wandb.log(final, step=epochs)
    finally:
        epoch_log.close()
    torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}}, root / WEIGHTS)
    report = {
        "public/val_acc": metrics["acc"],
        **({"public/val_acc_last": final["pretrain/val_acc_last"]} if averager else {}),
        "public/train_loss": total / max(seen, 1),
        "public/classes": info.num_classes,
        "time/pretrain_s": time.perf_counter() - t0,
    }
    (root / "metrics.json").write_text(json.dumps(report, indent=2))
    last = report.get("public/val_acc_last")
    log.info("pretrained: public val/acc %.4f%s in %.0fs", metrics["acc"],
             "" if last is None else f" (averaged; last weights {last:.4f})",
             report["time/pretrain_s"])


def pretrained_weights(cfg: dict[str, Any], on_epoch: EpochHook | None = None) -> Path:
    """Path to public-pill weights for cfg's model, training them first if not cached.

    `on_epoch(epochs_done)` is called after every epoch of a training (not on a cache hit).
    """
    key = pretrain_key(cfg)
    key_hash = config_hash(key)
    cache = cache_dir_for(cfg["data"])
    partial = cache / f".pretrain-{key_hash}.partial"
    root = cached_build(cache, "pretrain", key, lambda d: _train(cfg, d, partial, key_hash,
                                                                 on_epoch))
    shutil.rmtree(partial, ignore_errors=True)  # finished: the checkpoint has served
    return root / WEIGHTS


def resolve_pretrained(cfg: dict[str, Any]) -> dict[str, Any]:
    """The pretrain group's `_target_`: `model.pretrained` set to the cached public-pill weights."""
    return {**cfg, "model": {**cfg["model"], "pretrained": str(pretrained_weights(cfg))}}


# fedray.validate runs this before anything starts (the pretrain group's own check)
resolve_pretrained.fedray_check = check_pretrain  # type: ignore[attr-defined]
