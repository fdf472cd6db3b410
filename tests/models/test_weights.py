import pytest
import torch

from ctdl.errors import InputError
from ctdl.models.weights import load_weights, read_state_dict


def test_load_weights_strict_and_prefix(tmp_path) -> None:
    src = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(2, 2))
    path = tmp_path / "w.pt"
    torch.save({"model": {"features." + k: v for k, v in src.state_dict().items()}}, path)
    dst = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(2, 2))
    load_weights(dst, read_state_dict(path), source=path, prefix="features.")
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].bias, src[1].bias)


def test_load_weights_lists_missing_and_mismatched_keys(tmp_path) -> None:
    src = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    state = dict(src.state_dict())
    del state["0.bias"]
    dst = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 4, 1))
    with pytest.raises(InputError, match=r"missing keys: 0\.bias, 1\.weight, 1\.bias"):
        load_weights(dst, state, source="w.pt")
    bad = {"0.weight": torch.zeros(3, 1, 3, 3), "0.bias": torch.zeros(3)}
    with pytest.raises(InputError, match=r"shape mismatch: 0\.weight \(file \(3, 1, 3, 3\)"):
        load_weights(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), bad)
    # a new head may stay unloaded when named in ignore
    load_weights(dst, {**src.state_dict()}, ignore=("1.",))


def test_read_state_dict_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(InputError, match="not a PyTorch state dict"):
        read_state_dict(tmp_path / "junk.pt")
