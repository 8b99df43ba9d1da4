"""Client-local layers (`fl.local`): parts of the model that train on each client and never
leave it. With the normalization layers that is FedBN (Li et al., ICLR 2021): clients whose
photos differ in style (a studio and a phone, two cameras, two sites) share the convolutions and
keep their own normalization statistics and affine parameters, which an average would blur into
ones that fit no client.

`fl.local=norm` names every normalization layer (BatchNorm, InstanceNorm, GroupNorm, LayerNorm)
among what trains; any other string is a regex over the names of the state entries that travel
(`fedray.fl.train.travel_names`: trainable parameters and the buffers of fully trained modules).
Those entries are left out of what a client uploads and of what the strategy aggregates: each
client starts every round from the aggregated shared entries and its own local ones from its
last round (the initial model's before it has any). A simulation serves more virtual clients
than it has processes, so the driver keeps each client's local entries between its rounds, as a
phone would keep them on itself: they are not counted as communication and never reach the
strategy or the server's aggregate. Attacks, clipping, noise and secure aggregation's masks
(fedray/privacy) apply to the shared entries, the part that leaves the phone.

The server's own model (`val/*`) carries the clients' local entries averaged by their train
samples, what a client new to the federation would start from. Each client's own model (the
shared entries and its local ones) is scored on the val samples of its own classes or site
(`fedray.fl.scores`): `val_local/<metric>` each evaluated round over that round's clients,
`client/<c>/val_<metric>` and `val_local/<metric>` over every client in the summary.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from fedray.checks import matching
from fedray.config import ConfigError
from fedray.fl.types import ClientResult, Params

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # BatchNorm*, InstanceNorm*


def local_names(model: nn.Module, travel: list[str], spec: Any) -> list[str]:
    """The travelled state entries `fl.local` keeps on the clients ([] when it is null)."""
    if spec is None:
        return []
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"fl.local: {spec!r} is not null, norm or a regex over state names")
    if spec == "norm":
        layers = {name for name, m in model.named_modules() if isinstance(m, NORMS)}
        chosen = [n for n in travel if n.rpartition(".")[0] in layers]
        if not chosen:
            raise ConfigError(
                "fl.local=norm: no normalization layer among what trains and travels "
                f"({len(travel)} entries, e.g. {travel[:3]}); FedBN needs BatchNorm (or another "
                "norm layer) in the trained part of the model (fl.trainable)"
            )
    else:
        chosen = matching("fl.local", spec, travel)
        if not chosen:
            raise ConfigError(
                f"fl.local={spec!r} matches none of the {len(travel)} state entries that travel "
                f"(e.g. {travel[:3]}); only what trains can stay local"
            )
    if len(chosen) == len(travel):
        raise ConfigError(
            f"fl.local={spec!r} keeps every entry that travels on the clients: nothing would be "
            "federated (that is stage=isolated)"
        )
    return chosen


def check_local(cfg: dict[str, Any], has_bind: bool) -> None:
    """What `fl.local` cannot be combined with, before anything starts."""
    fl = cfg["fl"]
    if fl.get("local") is None or cfg.get("stage", "federated") != "federated":
        return
    clashes = [
        ("fl.head_init=ridge", fl.get("head_init", "random") == "ridge"),
        (f"strategy={(cfg.get('strategy') or {}).get('name')}", has_bind),
    ]
    for what, on in clashes:
        if on:
            raise ConfigError(
                f"fl.local={fl['local']!r} with {what}: client-local layers are not supported "
                "there yet (it builds or reads each client's whole model); drop one of the two"
            )


class LocalLayers:
    """Each client's local entries between its rounds, and their sample-weighted mean."""

    def __init__(self, names: list[str], init: Params) -> None:
        self.init = {n: init[n] for n in names}  # the local entries' initial values, in order
        self.clients: dict[int, Params] = {}
        self.samples: dict[int, int] = {}

    @property
    def names(self) -> list[str]:
        return list(self.init)

    def shared(self, params: Params) -> Params:
        """`params` without the local entries (what is uploaded and aggregated)."""
        return {k: v for k, v in params.items() if k not in self.init}

    def start(self, params: Params, client_id: int) -> Params:
        """What a client starts its round from: the shared entries and its own local ones."""
        return {**params, **self.clients.get(client_id, self.init)}

    def keep(self, results: list[ClientResult]) -> list[ClientResult]:
        """Store each result's local entries for its client; the results with the shared only."""
        for res in results:
            self.clients[res.client_id] = {n: res.params[n] for n in self.init}
            self.samples[res.client_id] = res.num_samples
        return [replace(res, params=self.shared(res.params)) for res in results]

    def mean(self) -> Params:
        """The clients' local entries averaged by train samples (the initial ones before any)."""
        if not self.clients:
            return dict(self.init)
        ids = sorted(self.clients)
        w = np.array([self.samples[c] for c in ids], np.float64)
        w /= w.sum()
        return {
            n: sum(wi * self.clients[c][n].astype(np.float64) for wi, c in zip(w, ids, strict=True))
            .astype(np.float32)
            for n in self.init
        }

    def state_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clients = dict(state["clients"])
        self.samples = dict(state["samples"])
