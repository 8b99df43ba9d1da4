"""Every strategy through build_strategy, with hand-computed values on tiny arrays."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedray.config import ConfigError
from fedray.fl.strategies import STRATEGIES, build_strategy, strategy_defaults
from fedray.fl.types import ClientResult

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "strategy"


def params(w: list[float], b: float = 0.0) -> dict[str, np.ndarray]:
    """Weight (len(w),) and bias (1,), float32, in that key order."""
    return {"w": np.array(w, dtype=np.float32), "b": np.array([b], dtype=np.float32)}


def result(cid: int, w: list[float], n: int = 1, b: float = 0.0) -> ClientResult:
    return ClientResult(client_id=cid, params=params(w, b), num_samples=n)


def assert_params_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(actual[name], expected[name])


# --- configs -------------------------------------------------------------------------------------


def test_registry_and_config_files_cover_the_same_strategies() -> None:
    names = {"fedavg", "polyak", "fedprox", "fedadam", "fedyogi", "fedadagrad"}
    names |= {"median", "trimmed_mean", "krum", "feddf", "norm_bounded", "fltrust"}
    assert set(STRATEGIES) == names
    assert {f.stem for f in CONF_DIR.glob("*.yaml")} == names


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_config_file_builds_and_matches_constructor_defaults(name: str) -> None:
    # Prepare
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"), resolve=True)

    # Execute
    strategy = build_strategy(cfg)

    # Assert: the YAML names every knob with the constructor's default, so the two cannot drift
    assert type(strategy) is STRATEGIES[name]
    assert strategy.name == name
    assert cfg.pop("_target_") == f"{STRATEGIES[name].__module__}.{STRATEGIES[name].__name__}"
    assert cfg == {"name": name, **strategy_defaults(name)}


def test_unknown_or_missing_name() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy.name='fedsgd' is not a known strategy.*fedadam"
    ):
        build_strategy({"name": "fedsgd"})
    with pytest.raises(
        ConfigError, match=r"strategy.name is missing; choose one of \['fedadagrad'"
    ):
        build_strategy({"eta": 0.1})
    with pytest.raises(ConfigError, match="strategy must be a mapping"):
        build_strategy("fedavg")  # type: ignore[arg-type]


def test_unknown_parameter_names_key_and_valid_choices() -> None:
    with pytest.raises(
        ConfigError,
        match=r"strategy.beta_2 is not a parameter of strategy 'fedadagrad'; "
        r"valid parameters: \['beta_1', 'eta', 'tau'\]",
    ):
        build_strategy({"name": "fedadagrad", "beta_2": 0.99})
    with pytest.raises(ConfigError, match=r"strategy.mu is not a parameter.*'fedavg'.*none"):
        build_strategy({"name": "fedavg", "mu": 0.1})


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "fedadam", "eta": 0.0}, r"strategy.eta must be a number in \(0, inf\], got 0.0"),
        ({"name": "fedadam", "eta": "fast"}, r"strategy.eta must be a number.*got 'fast'"),
        ({"name": "fedyogi", "beta_1": 1.0}, r"strategy.beta_1 must be a number in \[0, 1\)"),
        ({"name": "fedyogi", "beta_2": -0.1}, r"strategy.beta_2 must be a number in \[0, 1\)"),
        ({"name": "fedadagrad", "tau": 0}, r"strategy.tau must be a number in \(0, inf\]"),
        ({"name": "fedadam", "beta_1": True}, r"strategy.beta_1 must be a number.*got True"),
        ({"name": "fedadam", "tau": float("nan")}, r"strategy.tau must be a number.*got nan"),
        ({"name": "polyak", "k": 1.5}, r"strategy.k must be a number in \[0, 1\], got 1.5"),
        ({"name": "fedprox", "mu": -0.1}, r"strategy.mu must be a number in \[0, inf\]"),
        ({"name": "trimmed_mean", "beta": 0.5}, r"strategy.beta must be a number in \[0, 0.5\)"),
        ({"name": "krum", "num_byzantine": -1}, r"strategy.num_byzantine must be an integer >= 0"),
        ({"name": "krum", "multi": 0}, r"strategy.multi must be an integer >= 1, got 0"),
        ({"name": "krum", "multi": 1.0}, r"strategy.multi must be an integer >= 1, got 1.0"),
    ],
)
def test_invalid_values_name_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(cfg)


# --- plain rules ---------------------------------------------------------------------------------


def test_fedavg_weights_by_num_samples() -> None:
    # Prepare
    strategy = build_strategy({"name": "fedavg"})
    results = [result(0, [1.0, 2.0], n=1, b=0.0), result(1, [3.0, 6.0], n=3, b=4.0)]

    # Execute
    new = strategy.aggregate(params([0.0, 0.0]), results)

    # Assert: (1 + 9) / 4, (2 + 18) / 4, (0 + 12) / 4
    assert_params_equal(new, params([2.5, 5.0], 3.0))
    assert strategy.client_config() == {}


def test_fedprox_is_fedavg_plus_mu_for_clients() -> None:
    strategy = build_strategy({"name": "fedprox", "mu": 0.1})
    results = [result(0, [1.0, 2.0], n=1), result(1, [3.0, 6.0], n=3)]
    new = strategy.aggregate(params([0.0, 0.0]), results)
    assert_params_equal(new, params([2.5, 5.0]))
    assert strategy.client_config() == {"proximal_mu": 0.1}


def test_polyak_keeps_k_of_the_global_params() -> None:
    # Prepare: FedAvg of the results is [0, 8]
    strategy = build_strategy({"name": "polyak", "k": 0.25})
    results = [result(0, [0.0, 8.0]), result(1, [0.0, 8.0])]

    # Execute
    new = strategy.aggregate(params([4.0, 0.0], 2.0), results)

    # Assert: 0.25 * [4, 0, 2] + 0.75 * [0, 8, 0]
    assert_params_equal(new, params([1.0, 6.0], 0.5))


# --- server optimizers: two rounds by hand -------------------------------------------------------


def test_fedadam_two_rounds() -> None:
    # Prepare: beta_1 = beta_2 = 0.5, tau = 1 (v starts at 1), eta = 3.
    strategy = build_strategy({"name": "fedadam", "eta": 3, "beta_1": 0.5, "beta_2": 0.5, "tau": 1})
    x0 = params([0.0, 0.0])
    # FedAvg (n = 1, 3): w = (4 + 24) / 4 = 7 and -7, b = 0 -> delta = [7, -7], [0]
    round1 = [result(0, [4.0, -4.0], n=1), result(1, [8.0, -8.0], n=3)]
    # m = 0.5 * 7 = 3.5;  v = 0.5 * 1 + 0.5 * 49 = 25;  x = 3 * 3.5 / (5 + 1) = 1.75
    # b: m = 0, v = 0.5, x = 0

    # Execute
    x1 = strategy.aggregate(x0, round1)

    # Assert
    assert_params_equal(x1, params([1.75, -1.75]))

    # Prepare: FedAvg = (3.75 + 3 * 7.75) / 4 = 6.75 -> delta = 5
    round2 = [result(0, [3.75, -3.75], n=1), result(1, [7.75, -7.75], n=3)]
    # m = 0.5 * 3.5 + 0.5 * 5 = 4.25;  v = 0.5 * 25 + 0.5 * 25 = 25;  x = 1.75 + 3 * 4.25 / 6
    # b: m = 0, v = 0.25

    # Execute
    x2 = strategy.aggregate(x1, round2)

    # Assert
    assert_params_equal(x2, params([3.875, -3.875]))
    state = strategy.state_dict()
    assert state["name"] == "fedadam"
    np.testing.assert_array_equal(state["m"]["w"], [4.25, -4.25])
    np.testing.assert_array_equal(state["m"]["b"], [0.0])
    np.testing.assert_array_equal(state["v"]["w"], [25.0, 25.0])
    np.testing.assert_array_equal(state["v"]["b"], [0.25])
    assert state["v"]["w"].dtype == np.float64


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_average_batchnorm_statistics_instead_of_stepping_them(name) -> None:
    # Prepare: a BN layer whose clients measure a small variance, round after round
    strategy = build_strategy({"name": name, "eta": 0.1, "tau": 1e-3})
    x = {"bn.weight": np.ones(2, np.float32), "bn.running_mean": np.zeros(2, np.float32),
         "bn.running_var": np.full(2, 0.2, np.float32)}
    for r in range(20):
        sent = [ClientResult(c, {"bn.weight": np.full(2, 1.5, np.float32),
                                 "bn.running_mean": np.full(2, 0.1 * c, np.float32),
                                 "bn.running_var": np.full(2, 0.01 + 0.02 * c, np.float32)}, 1)
                for c in range(2)]

        # Execute
        x = strategy.aggregate(x, sent)

        # Assert: the statistics are the clients' average every round; the weight is stepped
        np.testing.assert_allclose(x["bn.running_var"], [0.02, 0.02], rtol=1e-6)
        np.testing.assert_allclose(x["bn.running_mean"], [0.05, 0.05], rtol=1e-6)
        assert r == 0 or x["bn.weight"][0] != 1.5
    # stepped like a weight, FedAdam's and FedYogi's variance (0.2 -> 0.02 wanted) went below
    # zero here (-0.12 at its lowest, measured before the fix): NaN in every later forward pass
    assert np.isfinite(x["bn.weight"]).all()


def test_fedyogi_two_rounds_grows_and_shrinks_v_additively() -> None:
    # Prepare: beta_1 = beta_2 = 0.5, tau = 1 (v starts at 1), eta = 5.
    strategy = build_strategy({"name": "fedyogi", "eta": 5, "beta_1": 0.5, "beta_2": 0.5, "tau": 1})
    # FedAvg (n = 1, 3): (1 + 15) / 4 = 4 -> delta = [4, 4]
    round1 = [result(0, [1.0, 1.0], n=1), result(1, [5.0, 5.0], n=3)]
    # delta² = 16 > v = 1: v = 1 + 0.5 * 16 = 9;  m = 2;  x = 5 * 2 / (3 + 1) = 2.5
    # b: delta = 0 -> v = 1 - 0 = 1 (Adam would decay it to 0.5)

    # Execute
    x1 = strategy.aggregate(params([0.0, 0.0]), round1)

    # Assert
    assert_params_equal(x1, params([2.5, 2.5]))
    np.testing.assert_array_equal(strategy.state_dict()["v"]["b"], [1.0])

    # Prepare: delta = [12, 2]
    round2 = [result(0, [14.5, 4.5], n=1), result(1, [14.5, 4.5], n=3)]
    # w[0]: 144 > 9: v = 9 + 72 = 81;  m = 1 + 6 = 7;  x = 2.5 + 5 * 7 / (9 + 1) = 6
    # w[1]: 4 < 9:   v = 9 - 2 = 7;    m = 1 + 1 = 2;  x = 2.5 + 5 * 2 / (sqrt(7) + 1)

    # Execute
    x2 = strategy.aggregate(x1, round2)

    # Assert
    np.testing.assert_array_equal(strategy.state_dict()["v"]["w"], [81.0, 7.0])
    np.testing.assert_array_equal(strategy.state_dict()["m"]["w"], [7.0, 2.0])
    assert x2["w"][0] == 6.0
    assert x2["w"][1] == np.float32(2.5 + 10 / (np.sqrt(7.0) + 1))


def test_fedadagrad_two_rounds_with_momentum() -> None:
    # Prepare: beta_1 = 0.5, tau = 3 (v starts at 9), eta = 2.
    strategy = build_strategy({"name": "fedadagrad", "eta": 2, "beta_1": 0.5, "tau": 3})
    round1 = [result(0, [4.0, 4.0], n=2), result(1, [4.0, 4.0], n=5)]  # delta = 4
    # v = 9 + 16 = 25;  m = 2;  x = 2 * 2 / (5 + 3) = 0.5

    # Execute
    x1 = strategy.aggregate(params([0.0, 0.0]), round1)

    # Assert
    assert_params_equal(x1, params([0.5, 0.5]))

    # Prepare: delta = 12
    round2 = [result(0, [12.5, 12.5], n=2), result(1, [12.5, 12.5], n=5)]
    # v = 25 + 144 = 169;  m = 1 + 6 = 7;  x = 0.5 + 2 * 7 / (13 + 3) = 1.375

    # Execute
    x2 = strategy.aggregate(x1, round2)

    # Assert
    assert_params_equal(x2, params([1.375, 1.375]))
    np.testing.assert_array_equal(strategy.state_dict()["v"]["w"], [169.0, 169.0])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizer_state_round_trip_continues_identically(name: str) -> None:
    # Prepare: one round, then checkpoint through pickle as a server would
    rng = np.random.default_rng(0)

    def round_results() -> list[ClientResult]:
        return [result(c, rng.normal(size=2).tolist(), n=c + 1) for c in range(3)]

    original = build_strategy({"name": name, "eta": 0.1})
    x1 = original.aggregate(params([0.0, 0.0]), round_results())
    checkpoint = pickle.loads(pickle.dumps(original.state_dict()))
    resumed = build_strategy({"name": name, "eta": 0.1})
    resumed.load_state_dict(checkpoint)
    round2, round3 = round_results(), round_results()

    # Execute
    a2 = original.aggregate(x1, round2)
    b2 = resumed.aggregate(x1, copy.deepcopy(round2))
    a3 = original.aggregate(a2, round3)
    b3 = resumed.aggregate(b2, copy.deepcopy(round3))

    # Assert
    assert_params_equal(b2, a2)
    assert_params_equal(b3, a3)
    for moment in ("m", "v"):
        for key in ("w", "b"):
            np.testing.assert_array_equal(
                resumed.state_dict()[moment][key], original.state_dict()[moment][key]
            )


def test_state_dict_is_a_copy_and_fresh_state_round_trips() -> None:
    strategy = build_strategy({"name": "fedadam"})
    assert strategy.state_dict() == {"name": "fedadam", "m": None, "v": None}
    strategy.aggregate(params([0.0, 0.0]), [result(0, [1.0, 1.0])])
    state = strategy.state_dict()
    state["m"]["w"][:] = 99.0
    assert not np.any(strategy.state_dict()["m"]["w"] == 99.0)
    strategy.load_state_dict({"name": "fedadam", "m": None, "v": None})
    assert strategy.state_dict()["m"] is None


def test_load_state_dict_rejects_another_strategys_state() -> None:
    fedavg = build_strategy({"name": "fedavg"})
    fedavg.load_state_dict(fedavg.state_dict())
    adam = build_strategy({"name": "fedadam"})
    with pytest.raises(ValueError, match="strategy 'fedavg', but this run uses 'fedadam'"):
        adam.load_state_dict(fedavg.state_dict())
    with pytest.raises(ValueError, match=r"fedavg keeps no server state, got keys \['m'\]"):
        fedavg.load_state_dict({"name": "fedavg", "m": {}})
    with pytest.raises(ValueError, match=r"needs keys \['m', 'v'\]"):
        adam.load_state_dict({"name": "fedadam", "m": None})


def test_server_optimizer_state_must_fit_the_params() -> None:
    strategy = build_strategy({"name": "fedyogi"})
    strategy.aggregate(params([0.0, 0.0]), [result(0, [1.0, 1.0])])
    bigger = {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}
    update = ClientResult(0, {"w": np.ones(3, np.float32), "b": np.ones(1, np.float32)}, 1)
    with pytest.raises(ValueError, match=r"state does not fit params: 'w' has shape \(3,\)"):
        strategy.aggregate(bigger, [update])


# --- base behaviour for every rule ----------------------------------------------------------------

ALL_CONFIGS = [
    {"name": "fedavg"},
    {"name": "polyak", "k": 0.3},
    {"name": "fedprox", "mu": 0.1},
    {"name": "fedadam", "eta": 0.1},
    {"name": "fedyogi", "eta": 0.1},
    {"name": "fedadagrad", "eta": 0.1},
    {"name": "median"},
    {"name": "trimmed_mean", "beta": 0.2},
    {"name": "krum", "num_byzantine": 1, "multi": 2},
]


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: c["name"])
def test_arrival_order_does_not_change_the_outcome(cfg: dict) -> None:
    # Prepare: w[0, 0] holds +-1e17 on two clients, so a float64 sum in arrival order loses the
    # small terms or keeps them depending on where the pair cancels
    rng = np.random.default_rng(1)
    big = {3: 1e17, 11: 3.0, 0: -1e17, 7: 5.0, 5: 7.0}
    counts = {3: 4, 11: 3, 0: 4, 7: 2, 5: 9}
    results = []
    for cid, value in big.items():
        w = rng.normal(size=(3, 2)).astype(np.float32)
        w[0, 0] = value
        b = rng.normal(size=2).astype(np.float32)
        results.append(ClientResult(cid, {"w": w, "b": b}, num_samples=counts[cid]))
    by_id = sorted(results, key=lambda r: r.client_id)
    naive_sum = [
        sum(float(r.params["w"][0, 0]) * r.num_samples for r in o) for o in (results, by_id)
    ]
    assert naive_sum[0] != naive_sum[1]  # the data really is order-sensitive
    global_params = {"w": np.zeros((3, 2), np.float32), "b": np.ones(2, np.float32)}

    # Execute: two rounds each, so the server optimizers' state is exercised too
    outputs = []
    for order in (results, by_id, list(reversed(results))):
        strategy = build_strategy(cfg)
        x1 = strategy.aggregate(global_params, order)
        outputs.append(strategy.aggregate(x1, order))

    # Assert
    assert_params_equal(outputs[1], outputs[0])
    assert_params_equal(outputs[2], outputs[0])


def test_krum_tie_goes_to_the_lower_client_id_in_any_order() -> None:
    # Prepare: 1-D points -1, 1, -3, 3, 100 (n=5, f=1): clients at -1 and 1 both score 4 + 4 = 8
    points = {8: [-1.0, 0.0], 2: [1.0, 0.0], 5: [-3.0, 0.0], 1: [3.0, 0.0], 0: [100.0, 0.0]}
    results = [result(cid, w) for cid, w in points.items()]
    strategy = build_strategy({"name": "krum", "num_byzantine": 1})

    # Execute
    outputs = [strategy.aggregate(params([0.0, 0.0]), o) for o in (results, results[::-1])]

    # Assert: client 2 (at 1) beats client 8 (at -1) on id, whatever the arrival order
    assert_params_equal(outputs[0], params([1.0, 0.0]))
    assert_params_equal(outputs[1], params([1.0, 0.0]))


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: c["name"])
def test_output_follows_global_key_order_and_dtype(cfg: dict) -> None:
    global_params = {"b": np.zeros(1, np.float32), "w": np.zeros(2, np.float32)}
    results = [result(c, [float(c), 1.0], n=1, b=float(c)) for c in range(5)]
    new = build_strategy(cfg).aggregate(global_params, results)
    assert list(new) == ["b", "w"]
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in new.values())
    assert [r.client_id for r in results] == [0, 1, 2, 3, 4]  # the caller's list is untouched


def test_aggregate_rejects_bad_rounds() -> None:
    strategy = build_strategy({"name": "fedavg"})
    g = params([0.0, 0.0])
    with pytest.raises(ValueError, match="fedavg: no client results"):
        strategy.aggregate(g, [])
    with pytest.raises(ValueError, match=r"duplicate client ids in one round: \[1, 1, 2\]"):
        strategy.aggregate(g, [result(1, [1.0, 1.0]), result(2, [1.0, 1.0]), result(1, [0.0, 0.0])])
    stray = ClientResult(4, {"w": np.zeros(2, np.float32)}, 1)
    with pytest.raises(
        ValueError, match=r"client 4 sent params whose keys differ.*missing \['b'\]"
    ):
        strategy.aggregate(g, [result(1, [1.0, 1.0]), stray])
    with pytest.raises(ValueError, match="total weight must be positive"):
        strategy.aggregate(g, [result(1, [1.0, 1.0], n=0)])


# --- robustness against one faulty client ---------------------------------------------------------

HONEST = [[1.0, 2.0], [1.5, 2.5], [0.5, 1.5], [1.25, 2.0]]
OUTLIER = [1e6, -1e6]


def robust_round() -> list[ClientResult]:
    # The outlier also claims a huge sample count: robust rules must not trust it.
    honest = [result(c, w, n=10, b=0.0) for c, w in enumerate(HONEST)]
    return [*honest, result(99, OUTLIER, n=10_000, b=1e6)]


def test_krum_picks_an_honest_update() -> None:
    # Prepare: squared distances 0-1: 0.5, 0-2: 0.5, 0-3: 0.0625, 1-2: 2, 1-3: 0.3125, 2-3: 0.8125;
    # scores (n=5, f=1: sum of the 2 nearest): 0: 0.5625, 1: 0.8125, 2: 1.3125, 3: 0.375, 99: huge
    strategy = build_strategy({"name": "krum", "num_byzantine": 1})
    multi = build_strategy({"name": "krum", "num_byzantine": 1, "multi": 3})

    # Execute
    chosen = strategy.aggregate(params([0.0, 0.0]), robust_round())
    averaged = multi.aggregate(params([0.0, 0.0]), robust_round())

    # Assert: client 3, then the mean of the three best (3, 0, 1)
    assert_params_equal(chosen, params(HONEST[3]))
    assert_params_equal(averaged, params([1.25, (2.0 + 2.0 + 2.5) / 3]))


def test_median_and_trimmed_mean_resist_one_huge_outlier() -> None:
    # Prepare
    g = params([0.0, 0.0])

    # Execute
    median = build_strategy({"name": "median"}).aggregate(g, robust_round())
    trimmed = build_strategy({"name": "trimmed_mean", "beta": 0.2}).aggregate(g, robust_round())
    fedavg = build_strategy({"name": "fedavg"}).aggregate(g, robust_round())

    # Assert: sorted w[0] = 0.5, 1, 1.25, 1.5, 1e6 and w[1] = -1e6, 1.5, 2, 2, 2.5, so the medians
    # are 1.25 and 2 and the trimmed means (drop 1 each end) 1.25 and 5.5 / 3; bias: 0
    assert_params_equal(median, params([1.25, 2.0]))
    np.testing.assert_array_equal(trimmed["w"], np.array([1.25, 5.5 / 3], np.float32))
    np.testing.assert_array_equal(trimmed["b"], [0.0])
    assert np.abs(fedavg["w"]).max() > 1e5  # FedAvg does not resist it
