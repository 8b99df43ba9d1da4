"""build_model: a constructor that refuses the config's values is a one-line ConfigError."""

from __future__ import annotations

import pytest

from fedray.checks import as_key
from fedray.config import ConfigError
from fedray.models import build_model


def test_a_constructor_refusing_its_values_is_a_config_error():
    # torch's own refusal of a negative channel count is a RuntimeError, not a ValueError
    conv = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": -3, "kernel_size": 3}
    with pytest.raises(ConfigError, match=r"^model: torch.nn.Conv2d refused .*negative dimension"):
        build_model(conv, 2)
    tiny = {"_target_": "fedray.models.tiny_cnn.TinyCNN"}
    for width in (0, 2.5):
        with pytest.raises(ConfigError, match=r"model.width=.*an integer >= 1"):
            build_model({**tiny, "width": width}, 2)
    # a value of another kind than the builder's default is refused before the builder runs
    for width, shown in ((True, "True"), (None, "None"), ("wide", "'wide'")):
        with pytest.raises(ConfigError, match=rf"^model.width: {shown} is not a finite number "
                                              r"\(fedray.models.tiny_cnn.TinyCNN takes a number"):
            build_model({**tiny, "width": width}, 2)


def test_errors_of_a_model_built_for_another_key_name_that_key():
    with pytest.raises(ConfigError, match=r"^distill.student: torch.nn.Conv2d refused"), \
            as_key("distill.student"):
        build_model({"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": -1,
                     "kernel_size": 1}, 2)
    with pytest.raises(ConfigError, match=r"^pretrain.teacher.turns=3"), \
            as_key("pretrain.teacher"):
        build_model({"_target_": "fedray.models.tiny_cnn.TinyCNN", "turns": 3}, 2)
    with pytest.raises(ConfigError, match=r"^data.root"), as_key("pretrain.teacher"):
        raise ConfigError("data.root: not a folder")  # another key's error passes unchanged
    with pytest.raises(ConfigError, match=r"^model_zoo"), as_key("pretrain.teacher"):
        raise ConfigError("model_zoo: ...")  # `model` only as a whole word
