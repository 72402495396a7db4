import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from specnet_zoo.layers._fft import padded_rfft2


@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
@pytest.mark.parametrize("size,fft_size", [((5, 6), (9, 8)), ((4, 4), (7, 9)), ((6, 5), (6, 5))])
def test_padded_rfft2_matches_torch_and_gradchecks(norm, size, fft_size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(padded_rfft2(x, fft_size, norm), torch.fft.rfft2(x, s=fft_size, norm=norm))
    assert gradcheck(lambda t: padded_rfft2(t, fft_size, norm), (x,))
    assert gradgradcheck(lambda t: padded_rfft2(t, fft_size, norm), (x,))


def test_padded_rfft2_rejects_cropping():
    with pytest.raises(ValueError, match="pads only"):
        padded_rfft2(torch.randn(1, 8, 8), (6, 8))
