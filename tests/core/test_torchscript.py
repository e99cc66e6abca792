"""Every head compiles with TorchScript (MACE scripts its final model) and matches eager mode."""

import io
from typing import Dict

import pytest
import torch
from core_helpers import fit_random_statistics, make_head
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
        self, x: torch.Tensor, f: torch.Tensor, batch: torch.Tensor, species: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        params, distance_sq = self.head.forward_with_distance(x, f, species)
        out = self.head.fields(params, batch, 2, distance_sq)
        out["loss"] = self.head.force_loss(params, f + 0.1)
        return out


@pytest.mark.parametrize("fitted", [False, True], ids=["as-trained", "calibrated"])
@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_head_scripts_and_matches_eager(kind, fitted):
    head = make_head(kind, IRREPS, num_species=2)
    if fitted:  # feature statistics and a recalibration scale are buffers the script keeps
        fit_random_statistics(head, num_species=2)
        head.density.load_force_prior(torch.tensor([0.05, 0.2]))
        head.variance_scale.set(0.37)
    wrapper = _Wrapper(head)
    scripted = jit.compile(wrapper)
    assert isinstance(scripted, torch.jit.ScriptModule)
    x = torch.randn(5, IRREPS.dim, dtype=torch.float64)
    f = torch.randn(5, 3, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    species = torch.tensor([0, 1, 1, 0, 1])
    saved = io.BytesIO()  # saved and loaded back, as MACE's *_compiled.model is
    torch.jit.save(scripted, saved)
    saved.seek(0)
    loaded = torch.jit.load(saved)
    eager, compiled = wrapper(x, f, batch, species), loaded(x, f, batch, species)
    assert bool((eager["forces_feature_distance"] > 0).all()) == fitted
    assert set(eager) == set(compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key])
