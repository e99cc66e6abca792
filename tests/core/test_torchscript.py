"""Every head compiles with TorchScript (MACE scripts its final model) and matches eager mode."""

from typing import Dict

import pytest
import torch
from core_helpers import make_head
from e3nn.util import jit
from e3nn.util.jit import compile_mode

from eip_plugins.core._e3nn import o3

IRREPS = o3.Irreps("6x0e + 6x1o")


@compile_mode("script")  # as MACE's models are
class _Wrapper(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(
        self, x: torch.Tensor, f: torch.Tensor, batch: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        params = self.head(x, f)
        out = self.head.fields(params, batch, 2)
        out["loss"] = self.head.force_loss(params, f + 0.1)
        return out


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_head_scripts_and_matches_eager(kind):
    wrapper = _Wrapper(make_head(kind, IRREPS))
    scripted = jit.compile(wrapper)
    assert isinstance(scripted, torch.jit.ScriptModule)
    x = torch.randn(5, IRREPS.dim, dtype=torch.float64)
    f = torch.randn(5, 3, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    eager, compiled = wrapper(x, f, batch), scripted(x, f, batch)
    assert set(eager) == set(compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key])
