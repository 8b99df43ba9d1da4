"""model.pretrained: a state_dict loads; anything else is a one-line ConfigError naming the file."""

from __future__ import annotations

import pytest
import torch

from fedray.config import ConfigError
from fedray.models import TinyCNN, load_pretrained


def test_a_state_dict_loads_and_a_head_of_another_shape_is_skipped(tmp_path):
    src, dst = TinyCNN(3, width=4), TinyCNN(5, width=4)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    skipped = load_pretrained(dst, tmp_path / "w.pt")
    assert skipped and all(k.startswith("classifier") for k in skipped)
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_text("not weights"), r"is not a saved state_dict \(torch cannot read "
                                                 r"it as tensors alone\); save one with"),
        (lambda p: torch.save(torch.zeros(3), p), r"holds a Tensor, not a state_dict"),
        (lambda p: torch.save(TinyCNN(2, width=4), p), r"is not a saved state_dict"),
    ],
    ids=["text", "tensor", "whole-model"],
)
def test_a_file_that_is_not_a_state_dict_is_named(make, match, tmp_path):
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(ConfigError, match=rf"model.pretrained='{path}' {match}"):
        load_pretrained(TinyCNN(2, width=4), path)
