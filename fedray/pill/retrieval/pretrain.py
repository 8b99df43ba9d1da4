"""The public pretraining every retrieval model can start from (`retrieval.pretrain`).

A central training of the embedding streams on a public catalog: other pills (no face of one
looks like a face of a private pill, `build_retrieval_data(public_of=...)`), their references
and all their consumer photos, with the run's own loss and optimiser (`retrieval.train`; its
proxies start random, as the network does). The server holds this data, so the federated models
start from it as their first global model at no cost in privacy; the central models start
from it too, so the federated-vs-central comparison stays fair, and the fold's test pills are
in neither. Cached under the dataset cache, keyed by what changes its weights (the public
catalog and the code that makes it, the network, the recipe, the seed; its initial weights are
drawn from the seed and the architecture alone), so every run and fold that agrees on those
shares one pretraining.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedray.data.datasets import config_hash
from fedray.pill.retrieval import data as retrieval_data
from fedray.pill.retrieval.data import build_retrieval_data, cache_root, training_pool
from fedray.pill.retrieval.nets import ARCHS, MultiStream, load_model, save_model
from fedray.pill.retrieval.train import train_embedding

log = logging.getLogger("fedray")

_RECIPE = ("loss", "temperature", "batch_size", "lr", "schedule", "weight_decay", "margin",
           "window", "standardize", "augment")
_SOURCES = ("pretrain.py", "train.py", "triplet.py", "nets.py", "streams.py")


def enabled(rcfg: dict[str, Any]) -> bool:
    """Whether `retrieval.pretrain` asks for a public pretraining."""
    pcfg = rcfg.get("pretrain") or {}
    return int(pcfg.get("num_pills") or 0) > 0 and int(pcfg.get("epochs") or 0) > 0


def _source_hash() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def init_seed(seed: int, *parts: int) -> int:
    """The torch seed of a network's initial weights, from the run's seed and `parts` alone."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU RNG seeded with `seed` inside, and back as it was after: a network built
    inside depends on `seed` only, not on what was built before, nor changes what comes after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cache_key(arch: str, rcfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides the pretrained weights of `arch` (nothing of the private run's split), the
    code that makes the public catalog (`data.py`'s source hash and VERSION) included."""
    cat, pcfg, tcfg = rcfg["catalog"], rcfg["pretrain"], rcfg["train"]
    return {"arch": arch, "streams": list(rcfg["streams"]), "norm": bool(rcfg.get("norm", True)),
            "public": {"num_pills": int(pcfg["num_pills"]), "public_of": int(cat["num_pills"]),
                       "catalog_seed": int(cat["catalog_seed"]),
                       "image_size": int(cat["image_size"]),
                       "photos_per_side": int(cat["photos_per_side"]),
                       "num_textures": int(cat["num_textures"])},
            "epochs": int(pcfg["epochs"]), "seed": seed,
            "recipe": {k: tcfg[k] for k in _RECIPE if k in tcfg}, "code": _source_hash(),
            "data": {"code": retrieval_data._source_hash(), "version": retrieval_data.VERSION}}


def pretrained(arch: str, rcfg: dict[str, Any], seed: int, device: str = "cpu",
               on_epoch=None) -> MultiStream:
    """`arch`'s streams trained on the public catalog (from the cache when done before); a
    copy is what each model of the run starts from."""
    key = cache_key(arch, rcfg, seed)
    cat = rcfg["catalog"]
    path = cache_root(cat.get("cache_dir")) / f"pretrain-{arch}-{config_hash(key)}.pt"
    if path.exists():
        log.info("retrieval: public pretraining of the %s from the cache (%s)", arch, path)
        return load_model(path)
    pub = key["public"]
    data = build_retrieval_data(pub["num_pills"], pub["image_size"], pub["photos_per_side"],
                                pub["catalog_seed"], seed, pub["num_textures"],
                                cat.get("cache_dir"), public_of=pub["public_of"])
    pool, pool_pill, ref_index = training_pool(data, np.arange(data.num_pills),
                                               data.photos.shape[2])
    with seeded(init_seed(seed, 104729, ARCHS.index(arch))):
        model = MultiStream(arch, list(rcfg["streams"]), pub["image_size"],
                            norm=bool(rcfg.get("norm", True)))
    t0 = time.perf_counter()
    log.info("retrieval: public pretraining of the %s: %d pills, %d images, %d epochs", arch,
             data.num_pills, len(pool), key["epochs"])
    train_embedding(model, pool, pool_pill, ref_index,
                    {**rcfg["train"], "epochs": key["epochs"], "proxy_init": "random"},
                    seed + 104729, on_epoch,
                    device=device)
    save_model(model, path.with_suffix(".tmp"), {"pretrain": key})
    path.with_suffix(".tmp").replace(path)
    log.info("retrieval: public pretraining of the %s done in %.0fs -> %s", arch,
             time.perf_counter() - t0, path)
    model.meta = {"pretrain": key}  # as load_model gives it back from the cache
    return model.eval()


def start_from(init: MultiStream | None, arch: str, rcfg: dict[str, Any]) -> MultiStream:
    """A fresh model of `arch`: a copy of the pretrained one, else random weights (the stage
    calls it under `seeded(init_seed(seed, fold, arch))`)."""
    if init is not None:
        return copy.deepcopy(init).train()
    cat = rcfg["catalog"]
    return MultiStream(arch, list(rcfg["streams"]), int(cat["image_size"]),
                       norm=bool(rcfg.get("norm", True)))
