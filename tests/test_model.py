import pytest
import torch

from unetseg.config import ModelSpec
from unetseg.model import UNet, build_network, count_parameters, fold_batchnorm


@pytest.mark.parametrize(("upsampling", "expected"), [("bilinear", 13_394_177), ("transposed", 14_787_777)])
def test_classic_parameter_counts(upsampling: str, expected: int) -> None:
    model = build_network(ModelSpec(upsampling, in_channels=1, num_classes=1, base_channels=64, depth=4))
    assert count_parameters(model) == expected


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize(("height", "width"), [(37, 53), (16, 16), (5, 101), (1, 1)])
def test_any_input_size_gives_same_size_output(transposed: bool, height: int, width: int) -> None:
    model = UNet(in_channels=3, num_classes=2, base_channels=4, depth=4, transposed=transposed).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, height, width))
    assert out.shape == (2, 2, height, width)


def test_width_and_depth_are_configurable() -> None:
    small = UNet(base_channels=8, depth=2)
    assert small.inc[0].out_channels == 8
    assert len(small.downs) == 2 and len(small.ups) == 2
    assert small.size_multiple == 4


def test_padding_does_not_shift_content() -> None:
    """Interior predictions on an odd-sized crop match those of the aligned full image."""
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2).eval()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        full = model(image)
        odd = model(image[..., :63, :63])
    assert torch.allclose(full[..., 8:40, 8:40], odd[..., 8:40, 8:40], atol=1e-5)


def test_folding_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(2, 1, 32, 32) * 3 + 1)
    model.eval()
    x = torch.rand(1, 1, 29, 31)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(folded, expected, atol=1e-4)
