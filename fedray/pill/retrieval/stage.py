"""`stage=retrieval`: the paper's protocol on the synthetic catalog, cfg -> metrics.

Per fold (5-fold cross-validation by pill): train the teacher streams with triplet loss, the
student the same way (the paper's "student without KD"), then distil the teacher into a copy of
that student with the l2 loss ("student with KD"); score each on the fold's consumer photos
against the gallery of every reference. Rows go to metrics.jsonl (and W&B), the mean and std over
folds to summary.json, the CMC curves to cmc.png, each trained model to
models/fold<k>/<model>.pt (`nets.load_model` reads one back). With `retrieval.pretrain`, every
model trained here (central or federated) starts from one central pretraining on a public
catalog of other pills (`pretrain.py`) instead of random weights. Random initial weights
depend only on the seed, the fold and the architecture (`pretrain.init_seed`; a fold's teacher
and teacher_fed start alike), so a fold run alone is that fold of a five-fold run.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray import checks
from fedray.config import ConfigError
from fedray.logging import RunLogger
from fedray.pill.retrieval import pretrain
from fedray.pill.retrieval.data import build_retrieval_data, training_pool
from fedray.pill.retrieval.evaluate import evaluate_fold
from fedray.pill.retrieval.federated import DRIFTS, round_share
from fedray.pill.retrieval.metrics import ASSIGNMENTS, REPORTED, folds_by_pill
from fedray.pill.retrieval.nets import ARCHS, STREAM_CHANNELS, MultiStream, load_model, save_model
from fedray.pill.retrieval.train import LOSSES, PROXY_INITS, SCHEDULES, distill, train_embedding

log = logging.getLogger("fedray")

MODELS = ("teacher", "student", "student_kd", "teacher_fed", "student_fed")  # the run order
_KEYS = {"_target_", "catalog", "folds", "run_folds", "train_photos", "models", "streams",
         "assignment", "norm", "threads", "train", "kd", "federated", "reuse", "pretrain"}


def _check_local_epochs(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    if isinstance(value, float) and 0 < value < 1:
        try:
            round_share(value)
            return
        except ValueError:
            pass
    raise ConfigError(f"retrieval.federated.local_epochs must be an integer >= 1 or 1/k "
                      f"(0.5, 0.25, ...) for the *_fed models, got {value!r}")


def _check_numbers(rcfg: dict[str, Any], tcfg: dict[str, Any], kd: bool) -> None:
    """The training numbers: a zero or negative one trains nothing (0 epochs, a margin <= 0
    that every triplet meets) or fails deep inside torch."""
    checks.number("retrieval.threads", rcfg.get("threads", 1), 1, integer=True)
    checks.boolean("retrieval.norm", rcfg.get("norm", True))
    checks.number("retrieval.train.epochs", tcfg.get("epochs"), 1, integer=True)
    checks.number("retrieval.train.batch_size", tcfg.get("batch_size"), 2, integer=True)
    checks.number("retrieval.train.lr", tcfg.get("lr"), 0, low_open=True)
    checks.number("retrieval.train.weight_decay", tcfg.get("weight_decay", 0.0), 0)
    checks.number("retrieval.train.margin", tcfg.get("margin", 0.2), 0, low_open=True)
    checks.number("retrieval.train.window", tcfg.get("window", 5), 1, integer=True)
    checks.boolean("retrieval.train.standardize", tcfg.get("standardize", True))
    aug = checks.mapping("retrieval.train.augment", tcfg.get("augment") or {})
    checks.number("retrieval.train.augment.rotate_deg", aug.get("rotate_deg", 0), 0, 180)
    checks.number("retrieval.train.augment.translate_px", aug.get("translate_px", 0), 0)
    checks.number("retrieval.train.augment.blur_prob", aug.get("blur_prob", 0), 0, 1)
    zoom = aug.get("zoom", [1.0, 1.0])
    if not (isinstance(zoom, list | tuple) and len(zoom) == 2
            and all(isinstance(z, int | float) and not isinstance(z, bool) for z in zoom)
            and 0 < zoom[0] <= zoom[1]):
        raise ConfigError(f"retrieval.train.augment.zoom: {zoom!r} is not [low, high] with "
                          "0 < low <= high")
    if kd:
        kcfg = rcfg.get("kd") or {}
        checks.number("retrieval.kd.epochs", kcfg.get("epochs"), 1, integer=True)
        checks.number("retrieval.kd.lr", kcfg.get("lr"), 0, low_open=True)


# the federated stage's keys that this stage's own federated loop takes under another name
_FL_KEYS = {"fl.num_clients": "retrieval.federated.clients",
            "fl.rounds": "retrieval.federated.rounds",
            "client.epochs": "retrieval.federated.local_epochs",
            "client.optimizer.lr": "retrieval.federated.lr",
            "client.batch_size": "retrieval.federated.batch_size"}


def check_not_fl(given: list[str]) -> None:
    """An `fl.*` or `client.*` key on the command line does nothing here (the *_fed models run
    their own loop, set by retrieval.federated): say which key does it instead."""
    for key in given:
        if key.split(".")[0] in ("fl", "client"):
            instead = _FL_KEYS.get(key, "the retrieval.federated keys")
            raise ConfigError(f"{key}: stage=retrieval does not read fl.* or client.* (the "
                              f"federated stage's); its *_fed models take {instead}")


def check_config(rcfg: dict[str, Any]) -> dict[str, Any]:
    """The retrieval config, checked; a bad value raises ConfigError naming the key."""
    unknown = sorted(set(rcfg) - _KEYS)
    if unknown:
        raise ConfigError(f"retrieval: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key in ("models", "streams"):
        if not isinstance(rcfg.get(key), list | tuple):
            raise ConfigError(f"retrieval.{key}: {rcfg.get(key)!r} is not a list")
    models = list(rcfg.get("models") or [])
    if not models or set(models) - set(MODELS):
        raise ConfigError(f"retrieval.models={models}: choose from {list(MODELS)}")
    if "student_kd" in models and not {"teacher", "student"} <= set(models):
        raise ConfigError("retrieval.models: student_kd needs teacher and student trained first")
    models = sorted(set(models), key=MODELS.index)
    fed = rcfg.get("federated") or {}
    if any(m.endswith("_fed") for m in models):
        for key in ("clients", "rounds"):
            if not isinstance(fed.get(key), int) or fed[key] < 1:
                raise ConfigError(f"retrieval.federated.{key} must be an integer >= 1 for "
                                  f"the *_fed models, got {fed.get(key)!r}")
        _check_local_epochs(fed.get("local_epochs"))
        checks.number("retrieval.federated.lr", fed.get("lr"), 0, low_open=True, optional=True)
        checks.number("retrieval.federated.batch_size", fed.get("batch_size"), 1, integer=True,
                      optional=True)
        checks.choice("retrieval.federated.drift", fed.get("drift", "none"), DRIFTS)
        if fed.get("loss") is not None:
            checks.choice("retrieval.federated.loss", fed["loss"], LOSSES)
    streams = list(rcfg.get("streams") or [])
    if not streams or set(streams) - set(STREAM_CHANNELS):
        raise ConfigError(f"retrieval.streams={streams}: choose from {list(STREAM_CHANNELS)}")
    tcfg = rcfg.get("train") or {}
    checks.choice("retrieval.train.loss", tcfg.get("loss", "triplet"), LOSSES)
    checks.choice("retrieval.train.schedule", tcfg.get("schedule", "constant"), SCHEDULES)
    checks.choice("retrieval.train.proxy_init", tcfg.get("proxy_init", "random"), PROXY_INITS)
    checks.number("retrieval.train.temperature", tcfg.get("temperature", 0.05), 0, low_open=True)
    _check_numbers(rcfg, tcfg, "student_kd" in models)
    checks.boolean("retrieval.kd.align", (rcfg.get("kd") or {}).get("align", True))
    pcfg = rcfg.get("pretrain") or {}
    for key in ("num_pills", "epochs"):
        checks.number(f"retrieval.pretrain.{key}", pcfg.get(key, 0), 0, integer=True)
    if rcfg.get("assignment", "best") not in ASSIGNMENTS:
        raise ConfigError(f"retrieval.assignment must be one of {ASSIGNMENTS}")
    cat = checks.mapping("retrieval.catalog", rcfg["catalog"])
    for key, low in (("num_pills", 2), ("image_size", 8), ("photos_per_side", 1)):
        checks.number(f"retrieval.catalog.{key}", cat.get(key), low, integer=True)
    checks.number("retrieval.folds", rcfg.get("folds"), 2, integer=True)
    checks.number("retrieval.train_photos", rcfg.get("train_photos"), 1, integer=True)
    folds = int(rcfg["folds"])
    if not 2 <= folds <= int(cat["num_pills"]):
        raise ConfigError(f"retrieval.folds={folds} must be in [2, catalog.num_pills]")
    run_folds = rcfg.get("run_folds")
    if run_folds is not None and not (
        isinstance(run_folds, list | tuple)
        and all(isinstance(f, int) and not isinstance(f, bool) for f in run_folds)
    ):
        raise ConfigError(f"retrieval.run_folds={run_folds!r}: a list of fold indices, or null")
    run_folds = list(range(folds)) if run_folds is None else [int(f) for f in run_folds]
    if (not run_folds or any(not 0 <= f < folds for f in run_folds)
            or len(set(run_folds)) < len(run_folds)):
        raise ConfigError(f"retrieval.run_folds={run_folds} must be distinct fold indices in "
                          f"[0, {folds})")
    q = int(cat["photos_per_side"])
    if not 1 <= int(rcfg["train_photos"]) <= q:
        raise ConfigError(f"retrieval.train_photos must be in [1, catalog.photos_per_side={q}]")
    size = int(cat["image_size"])
    for arch in {m.split("_")[0] for m in models}:
        try:
            MultiStream(arch, streams[:1], size)
        except ValueError as e:
            raise ConfigError(f"retrieval.catalog.image_size: {e}") from None
    reuse = rcfg.get("reuse")
    if reuse is not None and not (Path(str(reuse)) / "models").is_dir():
        raise ConfigError(f"retrieval.reuse: {reuse} holds no models/ folder (give the directory "
                          "of an earlier retrieval run: models/fold<k>/<model>.pt)")
    return {**rcfg, "models": models, "streams": streams, "run_folds": run_folds}


def _meta(rcfg: dict[str, Any], seed: int, fold: int) -> dict[str, Any]:
    """What decides which pills and photos a model of `fold` trained on (and what it started
    from, when that was a public pretraining)."""
    meta = {"seed": seed, "fold": fold, "folds": int(rcfg["folds"]),
            "train_photos": int(rcfg["train_photos"]),
            "catalog": {k: v for k, v in rcfg["catalog"].items() if k != "cache_dir"}}
    if pretrain.enabled(rcfg):
        meta["pretrain"] = {k: int(rcfg["pretrain"][k]) for k in ("num_pills", "epochs")}
    return meta


def _reused(rcfg: dict[str, Any], seed: int) -> dict[tuple[int, str], MultiStream]:
    """{(fold, model): trained model} found under `retrieval.reuse`, each checked to have been
    trained on this run's catalog, split and fold (else its test pills may have been trained
    on) and to have this run's streams; the rest of the models train as usual."""
    if rcfg.get("reuse") is None:
        return {}
    out, root = {}, Path(str(rcfg["reuse"])) / "models"
    for f in rcfg["run_folds"]:
        for name in rcfg["models"]:
            path = root / f"fold{f}" / f"{name}.pt"
            if not path.exists():
                continue
            try:
                model = load_model(path)
            except Exception as e:  # not a file save_model wrote: a user's mistake, not a bug
                raise ConfigError(f"retrieval.reuse: {path} is not a saved retrieval model "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
            want = _meta(rcfg, seed, f)
            differ = sorted(k for k in set(want) | set(model.meta)
                            if want.get(k) != model.meta.get(k))
            if differ:
                raise ConfigError(f"retrieval.reuse: {path} was trained on another catalog, "
                                  f"split or seed ({', '.join(differ)} differ from this run's)")
            norm = bool(rcfg.get("norm", True))
            if (model.streams, model.norm) != (rcfg["streams"], norm):
                raise ConfigError(f"retrieval.reuse: {path} has streams {model.streams} "
                                  f"(norm {model.norm}); this run asks for {rcfg['streams']} "
                                  f"(norm {norm})")
            out[(f, name)] = model
    return out


def _flat(prefix: str, res: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}/{m}": v[m] for k, v in res.items() if isinstance(v, dict)
            for m in REPORTED}


def run_retrieval(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train and score the configured models on every configured fold; returns the summary."""
    from fedray.fl.train import torch_device

    rcfg = check_config(cfg["retrieval"])
    seed, run_dir = int(cfg["seed"]), Path(cfg["run_dir"])
    reused = _reused(rcfg, seed)
    device = torch_device(cfg.get("device", "auto"))
    torch.set_num_threads(int(rcfg.get("threads") or torch.get_num_threads()))
    torch.manual_seed(seed)
    cat = rcfg["catalog"]
    folds = folds_by_pill(np.arange(int(cat["num_pills"])), int(rcfg["folds"]), seed)
    if any(m.endswith("_fed") and (f, m) not in reused  # a split that cannot be made fails
           for m in rcfg["models"] for f in rcfg["run_folds"]):  # now, before the catalog
        from fedray.data.partition import PartitionError, partition

        clients = int(rcfg["federated"]["clients"])
        for f in rcfg["run_folds"]:  # the training pool's labels: 2 references + photos a pill
            train = np.arange(int(cat["num_pills"]) - len(folds[f]))
            labels = np.repeat(train, 2 + 2 * int(rcfg["train_photos"]))
            try:
                parts = partition(labels, cfg["partition"], clients, seed)
            except PartitionError as e:  # the client count is this stage's key, not fl's
                raise PartitionError(f"{e} (retrieval.federated.clients={clients} over fold "
                                     f"{f}'s {len(train)} training pills)") from None
            if not any(len(np.unique(labels[p])) > 1 for p in parts):  # all would be skipped
                raise PartitionError(
                    f"partition: each of the {clients} clients holds one pill of fold {f}'s "
                    "training pills, and a triplet needs another pill for its negative: give "
                    "clients 2 pills or more (e.g. partition.classes_per_client=2)")
    data = build_retrieval_data(int(cat["num_pills"]), int(cat["image_size"]),
                                int(cat["photos_per_side"]), int(cat["catalog_seed"]), seed,
                                int(cat["num_textures"]), cat.get("cache_dir"))
    logger = RunLogger(run_dir, cfg)
    step = 0
    inits: dict[str, MultiStream | None] = {}  # arch -> the public pretraining (None: random)

    def init_of(arch: str) -> MultiStream | None:
        nonlocal step
        if arch not in inits:
            def log_pre(row: dict[str, Any]) -> None:
                nonlocal step
                step += 1
                logger.log({"round": step, "model": f"{arch}_pretrain", **row})
                log.info("%s public pretraining epoch %d: %s", arch, row["epoch"],
                         {k: round(v, 4) for k, v in row.items() if k != "epoch"})

            inits[arch] = (pretrain.pretrained(arch, rcfg, seed, device, log_pre)
                           if pretrain.enabled(rcfg) else None)
        return inits[arch]

    def fresh_model(arch: str, fold: int) -> MultiStream:
        """What a model of `arch` starts from in `fold`: random weights of (seed, fold, arch)
        alone (a fold's teacher and teacher_fed start alike), or the public pretraining."""
        init = init_of(arch)  # the pretraining runs outside `seeded`
        with pretrain.seeded(pretrain.init_seed(seed, fold, ARCHS.index(arch))):
            return pretrain.start_from(init, arch, rcfg)

    per_model: dict[str, list[dict[str, Any]]] = {m: [] for m in rcfg["models"]}
    t_start = time.perf_counter()
    try:
        for f in rcfg["run_folds"]:
            test = folds[f]
            train = np.setdiff1d(np.arange(data.num_pills), test)
            pool, pool_pill, ref_index = training_pool(data, train, int(rcfg["train_photos"]))
            trained: dict[str, MultiStream] = {}

            def log_epoch(row: dict[str, Any], f=f, name="") -> None:
                nonlocal step
                step += 1
                logger.log({"round": step, "fold": f, "model": name, **row})
                log.info("fold %d %s epoch %d: %s", f, name, row["epoch"],
                         {k: round(v, 4) for k, v in row.items() if k != "epoch"})

            for name in rcfg["models"]:
                t0 = time.perf_counter()
                arch = name.split("_")[0]
                if (f, name) in reused:
                    model = reused[(f, name)].to(device)
                    log.info("fold %d %s: reused from %s, not trained", f, name, rcfg["reuse"])
                elif name.endswith("_fed"):
                    from fedray.pill.retrieval.federated import train_federated

                    model = fresh_model(arch, f)
                    train_federated(model, pool, pool_pill, rcfg["federated"], rcfg["train"],
                                    cfg["partition"], cfg["strategy"],
                                    seed + 1000 * f + 3 + ARCHS.index(arch),
                                    lambda r, n=name: log_epoch(r, name=n), device=device)
                elif name == "student_kd":
                    model = copy.deepcopy(trained["student"])
                    distill(model, trained["teacher"], pool, {**rcfg["train"], **rcfg["kd"]},
                            seed + 1000 * f + 2, lambda r, n=name: log_epoch(r, name=n),
                            device=device)
                else:
                    model = fresh_model(arch, f)
                    train_embedding(model, pool, pool_pill, ref_index, rcfg["train"],
                                    seed + 1000 * f + ARCHS.index(arch),
                                    lambda r, n=name: log_epoch(r, name=n), device=device)
                trained[name] = model
                save_model(model, run_dir / "models" / f"fold{f}" / f"{name}.pt",
                           _meta(rcfg, seed, f))
                res = evaluate_fold(model, data, test, train, int(rcfg["train_photos"]), rcfg,
                                    seed + f, device)
                res["time_s"] = time.perf_counter() - t0
                per_model[name].append(res)
                step += 1
                logger.log({"round": step, "fold": f, "model": name, **_flat("eval", res)})
                log.info("fold %d %s: two-side MAP %.3f top-1 %.3f top-5 %.3f (%.0fs)", f, name,
                         res["consumer/multi/two_side"]["map"],
                         res["consumer/multi/two_side"]["top1"],
                         res["consumer/multi/two_side"]["top5"], res["time_s"])
        summary = summarize_folds(per_model)
        summary.update({"stage": "retrieval", "folds_run": rcfg["run_folds"],
                        "num_pills": data.num_pills, "time/total_s": time.perf_counter() - t_start})
        if cfg.get("logger", {}).get("plots", True):
            from fedray.pill.retrieval.plots import plot_cmc

            path = plot_cmc(per_model, run_dir / "cmc.png")
            logger.log_image("plots/cmc", path)
            summary["plots/cmc"] = str(path)
        logger.summary(summary)
        return summary
    finally:
        logger.close()


def _fedray_check(cfg: dict[str, Any]) -> None:
    """What `fedray.validate` runs before the run starts (in a sweep, as each trial starts)."""
    from fedray.config import command_line_keys

    check_config(cfg["retrieval"])
    check_not_fl(command_line_keys())


run_retrieval.fedray_check = _fedray_check  # type: ignore[attr-defined]


def summarize_folds(per_model: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """{model/key/metric: mean over folds, .../metric_std: std, model/key/cmc: mean curve}."""
    out: dict[str, Any] = {}
    for name, folds in per_model.items():
        for key in (k for k in folds[0] if isinstance(folds[0][k], dict)):
            for m in REPORTED:
                vals = [r[key][m] for r in folds]
                out[f"{name}/{key}/{m}"] = float(np.mean(vals))
                out[f"{name}/{key}/{m}_std"] = float(np.std(vals))
            out[f"{name}/{key}/cmc"] = np.mean([r[key]["cmc"] for r in folds], 0).tolist()
    return out
