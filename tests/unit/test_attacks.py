"""Attacks change exactly what they say: labels, images, updates; who attacks follows the seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.config import ConfigError
from fedray.fl.strategies.norm_bounded import NormBoundedFedAvg
from fedray.fl.types import ClientResult
from fedray.privacy import attacks
from fedray.privacy.pipeline import poison_shard, protect_update


def test_malicious_clients_are_a_function_of_seed():
    a = attacks.malicious_clients(10, 0.2, seed=0)
    assert len(a) == 2 and a == attacks.malicious_clients(10, 0.2, seed=0)
    assert any(attacks.malicious_clients(10, 0.2, seed=s) != a for s in range(1, 5))
    assert attacks.malicious_clients(10, 0.0, seed=0) == []


def test_label_flip():
    y = np.array([0, 1, 2, 3])
    assert attacks.flip_labels(y, 4).tolist() == [3, 2, 1, 0]


def test_trigger_and_backdoor_shard():
    x = np.zeros((5, 8, 8, 3), np.uint8)
    t = attacks.add_trigger(x, 3)
    assert x.sum() == 0  # not in place
    assert t[:, :5].sum() == 0 and t[:, :, :5].sum() == 0  # only the bottom-right 3x3 corner
    assert t[0, -1, -1, 0] == 255 and t[0, -1, -2, 0] == 0  # checkerboard
    y = np.array([1, 2, 3, 1, 2])
    px, py = attacks.backdoor_shard(x, y, target=0, poison_frac=0.4, patch=3, seed=0)
    assert len(py) == 7 and py[:5].tolist() == y.tolist() and py[5:].tolist() == [0, 0]
    assert px[5:, -3:, -3:].sum() > 0 and px[:5].sum() == 0


def test_update_attacks():
    u = {"w": np.array([1.0, -2.0])}
    rng = np.random.default_rng(0)
    assert attacks.poison_update(u, {"name": "sign_flip", "scale": 2.0}, rng)["w"].tolist() == [
        -2.0,
        4.0,
    ]
    assert attacks.poison_update(u, {"name": "scaled", "scale": 10.0}, rng)["w"].tolist() == [
        10.0,
        -20.0,
    ]
    noise = attacks.poison_update({"w": np.zeros(5000)}, {"name": "gaussian", "std": 3.0}, rng)
    assert np.std(noise["w"]) == pytest.approx(3.0, rel=0.05)
    assert attacks.poison_update(u, {"name": "backdoor", "boost": 1.0}, rng) is u


def test_only_malicious_clients_are_changed():
    plan = {
        "seed": 0,
        "attack": {
            "name": "sign_flip",
            "scale": 1.0,
            "clients": [1],
            "num_classes": 3,
            "fraction": 0.5,
        },
    }
    g = {"w": np.ones(3, np.float32)}
    p = {"w": np.array([2.0, 1.0, 0.0], np.float32)}
    honest, _ = protect_update(0, 0, g, p, 5, plan)
    evil, _ = protect_update(1, 0, g, p, 5, plan)
    assert honest["w"].tolist() == [2.0, 1.0, 0.0]
    assert evil["w"].tolist() == [0.0, 1.0, 2.0]  # 1 - (p - 1)
    y = np.array([0, 1, 2])
    plan["attack"]["name"] = "label_flip"
    assert poison_shard(None, y, 0, 0, plan)[1].tolist() == [0, 1, 2]
    assert poison_shard(None, y, 1, 0, plan)[1].tolist() == [2, 1, 0]


def test_attack_config_errors():
    with pytest.raises(ConfigError, match="attack.name"):
        attacks.check_attack({"name": "nope"}, 3)
    with pytest.raises(ConfigError, match="attack.target"):
        attacks.check_attack({"name": "backdoor", "target": 5}, 3)


def test_norm_bounded_fedavg_clips_each_update():
    g = {"w": np.zeros(2, np.float32)}
    results = [
        ClientResult(0, {"w": np.array([30.0, 40.0], np.float32)}, 1),
        ClientResult(1, {"w": np.array([0.3, 0.4], np.float32)}, 1),
    ]
    out = NormBoundedFedAvg(max_norm=1.0).aggregate(g, results)
    assert np.allclose(out["w"], [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2])


@pytest.mark.parametrize(
    ("attack", "key"),
    [({"name": "gaussian", "std": -1}, "attack.std"),  # once every attacker dropped, exit 0
     ({"name": "scaled", "scale": -5}, "attack.scale"),  # a sign flip under another name
     ({"name": "sign_flip", "scale": 0}, "attack.scale"),
     ({"name": "backdoor", "boost": 0}, "attack.boost")],  # the update zeroed
)
def test_attack_factors_must_be_positive(attack, key):
    with pytest.raises(ConfigError, match=rf"^{key}: .* is not a number > 0"):
        attacks.check_attack({"fraction": 0.2, **attack}, 3)


def test_a_key_the_attack_never_reads_is_refused_with_the_nearest():
    with pytest.raises(ConfigError, match=r"^attack.seed: no such key for attack=sign_flip; "
                                          r"attack has fraction, scale"):
        attacks.check_attack({"name": "sign_flip", "fraction": 0.2, "scale": 4.0, "seed": 3}, 3)
    with pytest.raises(ConfigError, match=r"did you mean attack.std\?"):
        attacks.check_attack({"name": "gaussian", "fraction": 0.2, "stdd": 1.0}, 3)
    with pytest.raises(ConfigError, match=r"^attack.scale: no such key for attack=label_flip"):
        attacks.check_attack({"name": "label_flip", "fraction": 0.2, "scale": 2.0}, 3)


def _privacy(*overrides):
    from fedray.config import compose_plain
    from fedray.privacy import check_privacy

    cfg = compose_plain(["+experiment=smoke", *overrides])
    check_privacy(cfg, 2, cfg["data"].get("num_classes"))


def test_the_data_attacks_fit_the_task_and_the_images():
    with pytest.raises(ConfigError, match=r"^attack.patch: a 100 px trigger does not fit in the "
                                          r"32 x 32 images \(data.image_size\); allowed: 1 to 32"):
        _privacy("fl.num_clients=10", "attack=backdoor", "attack.patch=100")
    _privacy("fl.num_clients=10", "attack=backdoor", "attack.patch=32")
    for kind in ("backdoor", "label_flip"):  # a segmentation mask has no class label to rewrite
        with pytest.raises(ConfigError, match=rf"^attack: attack={kind} rewrites class labels, "
                                              "but task=segmentation"):
            _privacy("fl.num_clients=10", "task=segmentation", f"attack={kind}")


@pytest.mark.parametrize("fraction", ["0", "0.2"])  # nobody, or 0.4 clients rounded to nobody
def test_an_attack_by_nobody_is_refused(fraction):
    with pytest.raises(ConfigError, match=r"^attack.fraction=.* = 0 attacking clients: .*"
                                          r"use attack=none"):
        _privacy("attack=sign_flip", f"attack.fraction={fraction}")


@pytest.mark.parametrize("on", ["dp=central", "attack=sign_flip", "fl.secure_agg=secagg"])
def test_privacy_settings_are_refused_off_federated_stages(on):
    """stage=centralized once ran as if they were off; stage=isolated refused them after Ray."""
    for stage in ("centralized", "isolated"):
        with pytest.raises(ConfigError, match=rf"^{on.split('=')[0]}: {on} applies to "
                                              rf"federated runs, not stage={stage}"):
            _privacy(f"stage={stage}", "fl.num_clients=10", on)
