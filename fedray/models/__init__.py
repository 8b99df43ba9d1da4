"""Models from config: `model._target_` names any callable that returns an `nn.Module`.

The model contract (what partial training and feature caching use): a model may expose
`features`, an `nn.Sequential` of backbone blocks, and `classifier`, its head. `fl.trainable=
classifier` then trains only the head, and the frozen leading blocks' output is computed once and
cached (`fl.cache_features`). `fedray.models.torchvision_split` gives any torchvision classifier
that split. A model without it still trains with `fl.trainable=all` (or a regex), uncached.

Keys every model config may carry besides its constructor's own: `name` (a label), `pretrained`
(a local weights file, or the name of the pretrain stage), `turns` (backbone averaged over that
many quarter turns of the image), `dropout` (the head's rate). The callable receives
`num_classes` when it takes that argument and the config does not set it.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedray.checks import like_defaults
from fedray.config import ConfigError
from fedray.models.tiny_cnn import TinyCNN
from fedray.models.torchvision_split import torchvision_classifier
from fedray.models.views import VIEW_KEYS, check_turns, check_zooms
from fedray.targets import first_line, import_target

# model keys that shape only the head fine-tuned on the pretrained backbone: pretraining ignores
# them (one cached backbone serves every value), but for model.taps when pretrain.taps=model
HEAD_KEYS = (*VIEW_KEYS, "dropout")
# keys fedray handles itself; the rest go to the model's `_target_`
GENERIC_KEYS = ("_target_", "name", "pretrained", "turns", "dropout", "channels_last")
__all__ = [
    "HEAD_KEYS",
    "TinyCNN",
    "build_model",
    "frozen_prefix",
    "has_split",
    "load_pretrained",
    "torchvision_classifier",
    "trainable_names",
]


def target_params(target: Any) -> Any:
    """The keyword parameters of the callable named `target` (an empty mapping when it cannot be
    imported or inspected: the model check reports a bad `_target_` by name)."""
    try:
        return inspect.signature(import_target("_target_", str(target))).parameters
    except (ConfigError, TypeError, ValueError):
        return {}


# what `instantiate_target` has warned it leaves out in this run (the config check, the server
# and the in-process clients build the same model: one warning); a client actor's own process
# warns of nothing (`quiet_left_out`): the driver has, before any client started
_LEFT_OUT_SAID: set[tuple[str, str, tuple[str, ...]]] = set()
_LEFT_OUT_QUIET = [False]


def quiet_left_out() -> None:
    """Called in a client actor's process (not by the in-process backend, whose clients live in
    the driver): the driver has said which keys a model leaves out."""
    _LEFT_OUT_QUIET[0] = True


def new_run() -> None:
    """A run starts in this process (a sweep's reused process runs several): warn again."""
    _LEFT_OUT_SAID.clear()


def instantiate_target(
    cfg: dict[str, Any], group: str, skip: tuple = (), drop_unknown: bool = False, **given: Any
) -> Any:
    """Call `cfg['_target_']` with the config's other keys (minus `skip`) as keyword arguments.

    Each `given` keyword is passed only when the callable accepts it and the config does not set
    it. A key the callable does not take is an error naming `<group>.<key>`, or, with
    `drop_unknown` (a user's `_target_` swapped into a group whose file set other keys), left out
    with a logged warning.
    """
    target = cfg.get("_target_")
    if not target:
        raise ConfigError(f"{group}._target_ is missing: name the callable that builds the {group}")
    fn = import_target(f"{group}._target_", str(target))
    kwargs = {k: v for k, v in cfg.items() if k not in ("_target_", *skip)}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if params and not takes_any and k not in params]
    if unknown and drop_unknown:
        said = (group, str(target), tuple(unknown))
        if not _LEFT_OUT_QUIET[0] and said not in _LEFT_OUT_SAID:
            _LEFT_OUT_SAID.add(said)
            logging.getLogger("fedray").warning(
                "%s: %s takes no %s; left out (set %s=... to a group without them)",
                group, target, ", ".join(unknown), group,
            )
        kwargs = {k: v for k, v in kwargs.items() if k not in unknown}
    elif unknown:
        raise ConfigError(
            f"{group}.{unknown[0]} is not an argument of {target}; it takes {sorted(params)} "
            f"(drop it with ~{group}.{unknown[0]})"
        )
    like_defaults(group, str(target), params, kwargs)  # `flag: maybe`, `width: null`, `lr: nan`
    for key, value in given.items():
        if key not in kwargs and (takes_any or key in params):
            kwargs[key] = value
    missing = [
        k for k, p in params.items()
        if p.default is inspect.Parameter.empty and k not in kwargs
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if missing:
        key = f"{group}.{missing[0]}"
        raise ConfigError(f"{key} is required by {target} ({key}=...)")
    try:
        return fn(**kwargs)
    except TypeError as exc:  # **kwargs passed on to a callable that refuses one of them
        if "abstract method" in str(exc):  # a subclass that left a base's hook unimplemented
            raise ConfigError(f"{group}._target_: {target} cannot be built: {first_line(exc)}"
                              ) from None
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if bad is None or bad.group(1) not in cfg:  # a key the user's config set
            raise
        key = f"{group}.{bad.group(1)}"
        raise ConfigError(f"{key}: {target} does not take it ({first_line(exc)}); drop it with "
                          f"~{key} or choose a {group} group without it") from None


def build_model(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the model `cfg` names with a `num_classes`-way head; load `pretrained` if given."""
    turns = check_turns(cfg.get("turns", 1))
    if "zooms" in cfg:
        cfg = {**cfg, "zooms": check_zooms(cfg.get("zooms"))}
    try:
        model = instantiate_target(
            cfg, "model", skip=GENERIC_KEYS, drop_unknown=True, num_classes=num_classes
        )
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as exc:  # the constructor refused a value the config gave
        # it (torch's own refusals, e.g. a negative channel count, are RuntimeErrors)
        raise ConfigError(f"model: {cfg['_target_']} refused the config's values: "
                          f"{first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg['_target_']!r} returned {type(model).__name__}, "
                          "not a torch.nn.Module")
    if turns > 1:
        if not has_split(model) or not hasattr(model, "turns"):
            raise ConfigError(
                f"model.turns={turns} needs a model whose forward averages its backbone over "
                f"quarter turns (a `turns` attribute: TinyCNN, the pill SqueezeNet-BN); "
                f"{type(model).__name__} has none: use model.turns=1"
            )
        model.turns = turns
    if cfg.get("dropout") is not None:
        set_dropout(model, cfg["dropout"])
    if cfg.get("pretrained"):
        load_pretrained(model, cfg["pretrained"])
    if not cfg.get("channels_last", True):
        return model
    # channels-last: the same maths, ~1.5x faster SqueezeNet training on CPU at 64-96 px
    # (bench/channels_last.py); travelled arrays are copied out C-ordered all the same
    return model.to(memory_format=torch.channels_last)


def has_split(model: nn.Module) -> bool:
    """True when the model follows the backbone/head contract (`features` + `classifier`)."""
    return isinstance(getattr(model, "features", None), nn.Sequential) and isinstance(
        getattr(model, "classifier", None), nn.Module
    )


def set_dropout(model: nn.Module, p: Any) -> None:
    """Set the rate of every dropout layer (the head's) to p, checked to lie in [0, 1)."""
    try:
        rate = float(p)
    except (TypeError, ValueError):
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"dropout={p!r}: give a rate in [0, 1)")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate


def read_state_dict(
    path: str | Path, key: str, allowed: str = "save one with torch.save(model.state_dict(), path)"
) -> dict[str, torch.Tensor]:
    """The state_dict saved at `path` (also inside a {"model": ...} checkpoint), read safely
    (weights only); a file that is not one is a ConfigError naming `key`, ending in `allowed`
    (what the key takes)."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # a pickle of another protocol: refused just below
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text is a page about weights_only
        raise ConfigError(f"{key}={str(path)!r} is not a saved state_dict (torch cannot read it "
                          f"as tensors alone); {allowed}") from None
    except Exception as exc:  # noqa: BLE001 - not a torch file at all
        raise ConfigError(
            f"{key}={str(path)!r} is not a state_dict torch can load safely "
            f"({type(exc).__name__}: {first_line(exc)[:100]}); {allowed}"
        ) from None
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"{key}={str(path)!r} holds a {type(state).__name__}, not a state_dict "
            f"(names to tensors); {allowed}"
        )
    return state


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load local weights, skipping a head of another shape (new classes); returns skipped keys."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model.pretrained={str(path)!r} does not exist. fedray never downloads weights: "
            "run the pretraining stage (stage=pretrain) or point model.pretrained at a local file"
        )
    state = read_state_dict(path, "model.pretrained")
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not compatible:
        raise ConfigError(f"model.pretrained={str(path)!r} has no weights that fit this model")
    model.load_state_dict(compatible, strict=False)
    return sorted(set(own) - set(compatible))


def trainable_names(model: nn.Module, spec: str) -> list[str]:
    """Parameter names selected by `fl.trainable`: all | classifier | a regex over names."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "all":
        chosen = names
    elif spec == "classifier":
        if not has_split(model):
            raise ConfigError(
                "fl.trainable=classifier needs a model with a `classifier` head (the backbone/head "
                f"contract, fedray.models); {type(model).__name__} has none: use fl.trainable=all"
            )
        chosen = [n for n in names if n.startswith("classifier.")]
    else:
        from fedray.checks import matching

        chosen = matching("fl.trainable", spec, names)
    if not chosen:
        raise ConfigError(f"fl.trainable={spec!r} selects no parameters; the model has {names}")
    return chosen


def frozen_prefix(model: nn.Module, names: list[str]) -> int:
    """How many leading `model.features` blocks have no trainable parameter.

    Their output never changes during training, so it can be computed once and cached; 0 means
    the first block trains (nothing to cache), len(model.features) means only the head trains.
    """
    if not has_split(model):
        return 0  # no backbone/head split: nothing can be cached
    chosen = set(names)
    for i, block in enumerate(model.features):
        if any(f"features.{i}.{n}" in chosen for n, _ in block.named_parameters()):
            return i
    return len(model.features)
