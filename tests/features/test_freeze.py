"""`freeze_for_inference`: TorchScript where it can, the eager module where it cannot."""

import numpy as np
import torch
from torch import nn

from rcnn.features.extractor import freeze_for_inference


class _DictOfMaps(nn.Module):
    """A pyramid-like module TorchScript cannot script (numpy in forward) giving a dict of maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x) * float(np.sqrt(4.0))
        return {"0": y, "1": nn.functional.max_pool2d(y, 2)}


class _Unfreezable(_DictOfMaps):
    """Neither scriptable (numpy) nor traceable (it refuses to be traced)."""

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("data-dependent control flow")
        return {"0": self.conv(x) * float(np.sqrt(4.0))}


def test_a_dict_of_maps_is_traced_and_an_untraceable_module_runs_eagerly(caplog):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    pyramid = _DictOfMaps().eval()
    frozen = freeze_for_inference(pyramid, x, torch.contiguous_format)
    assert isinstance(frozen, torch.jit.ScriptModule)
    with torch.no_grad():
        want, got = pyramid(x), frozen(x)
    assert set(got) == {"0", "1"} and all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)

    odd = _Unfreezable().eval()
    with caplog.at_level("WARNING"):
        eager = freeze_for_inference(odd, x, torch.contiguous_format)
    assert not isinstance(eager, torch.jit.ScriptModule) and "runs eagerly" in caplog.text
    with torch.no_grad():
        assert torch.equal(eager(x)["0"], odd(x)["0"])
