"""ViPTT-Net: parameter counts at the paper's size, a forward/backward pass on a reduced input, VGG weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctdl.errors import InputError
from ctdl.models import count_parameters, create_model, model_info
from ctdl.models.vgg import vgg_features


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_size_counts() -> None:
    torch.manual_seed(0)
    m = create_model("viptt_net", out_channels=5)
    assert model_info("viptt_net")["default_input"] == (1, 70, 224, 224)
    assert model_info("viptt_net")["task"] == "classification"
    parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in m.named_children()}
    # reference/viptt_net.md: 6 / 14,714,688 / LSTM 788,480 (PyTorch) / 263,168 / 5,125
    assert parts == {"channel_map": 6, "features": 14_714_688, "pool": 0, "rnn": 788_480, "fc": 263_168, "head": 5_125}
    assert count_parameters(m) == 15_771_467
    assert count_parameters(create_model("viptt_net", out_channels=10)) == 15_771_467 - 5_125 + 10_250
    # GRU option: 3 gates instead of 4
    gru = create_model("viptt_net", rnn="gru", vgg_width=0.0625)  # 32 features per slice at this width
    assert sum(p.numel() for p in gru.rnn.parameters()) == 3 * (32 * 256 + 256 * 256 + 2 * 256)


def test_forward_backward_reduced_input() -> None:
    torch.manual_seed(0)
    m = create_model("viptt_net", out_channels=5, vgg_width=0.0625, rnn_units=16, dense_units=32, slice_chunk=5)
    x = torch.randn(2, 1, 6, 32, 32)
    y = m(x)
    assert y.shape == (2, 5)
    seq = m.slice_features(x)
    assert seq.shape == (2, 6, 32)  # one feature vector per axial slice
    # slices are processed independently by the CNN: changing slice 3 changes only feature 3
    x2 = x.clone()
    x2[:, :, 3] += 1.0
    diff = (m.slice_features(x2) - seq).abs().sum(-1)
    assert (diff[:, 3] > 0).all() and torch.all(diff[:, [0, 1, 2, 4, 5]] == 0)
    y.sum().backward()
    assert m.channel_map.weight.grad is not None and m.channel_map.weight.grad.abs().sum() > 0


def test_freeze_features() -> None:
    m = create_model("viptt_net", vgg_width=0.0625, freeze_features=True)
    assert not any(p.requires_grad for p in m.features.parameters())
    assert all(p.requires_grad for p in m.rnn.parameters())


def test_load_vgg_weights_from_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = vgg_features(16)
    state = {f"features.{k}": v for k, v in src.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ImageNet files carry the classifier too: left out on purpose
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    m = create_model("viptt_net", pretrained=str(path))
    assert torch.equal(m.features[0].weight, src[0].weight)
    assert torch.equal(m.features[28].bias, src[28].bias)

    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(InputError, match=r"missing keys: features\.28\.weight"):
        create_model("viptt_net", pretrained=str(path))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="rnn must be"):
        create_model("viptt_net", rnn="transformer")
    with pytest.raises(ValueError, match="vgg_width"):
        create_model("viptt_net", vgg_width=2.0)


def test_demo_options_pooled_rnn_output_and_batch_norm() -> None:
    torch.manual_seed(0)
    m = create_model("viptt_net", vgg_width=0.0625, rnn_units=8, dense_units=16, rnn_output="max", batch_norm=True).eval()
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.features) == 13
    x = torch.randn(2, 1, 5, 32, 32)
    out, _ = m.rnn(m.slice_features(x))
    expected = m.head(torch.relu(m.fc(out.max(1).values)))
    assert torch.allclose(m(x), expected)
    # Keras-style init: LSTM forget-gate bias 1, other biases 0
    b = m.rnn.bias_ih_l0.detach()
    assert torch.all(b[8:16] == 1) and torch.all(b[:8] == 0) and torch.all(m.rnn.bias_hh_l0 == 0)
