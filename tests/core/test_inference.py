"""script_head: a head as TorchScript gives the eager head's outputs and gradients to rounding (its
optimised graph may order or fuse the same arithmetic otherwise), shares its tensors, and refuses
what TorchScript cannot compile with one line."""

import pytest
import torch
from core_helpers import (
    ToyBackbone,
    fit_narrow_output_range,
    fit_random_statistics,
    make_head,
    radius_graph,
)

from eip_plugins.core.inference import INFERENCE_METHODS, script_head

VECTOR_IRREPS = "6x0e + 6x1o"
SCALAR_IRREPS = "6x0e"
R_MAX = 3.0


def _inputs(irreps: str, seed: int = 3):
    """Node features of the toy backbone (its scalars only for ``SCALAR_IRREPS``), forces, the
    neighbour list, all with the graph of the positions (N, 3) kept."""
    g = torch.Generator().manual_seed(seed)
    positions = (1.6 * torch.randn(7, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    feats = ToyBackbone(6)(positions)
    if irreps == SCALAR_IRREPS:
        feats = feats[:, :6]
    forces = torch.sin(positions) @ torch.randn(3, 3, generator=g, dtype=torch.float64)
    edge_index, edge_vectors = radius_graph(positions, R_MAX)
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    return positions, feats, forces, species, edge_index, edge_vectors, batch


def _fields(head, inputs):
    _, feats, forces, species, edge_index, edge_vectors, batch = inputs
    params, distance_sq = head.forward_with_distance(
        feats, forces, species, edge_index, edge_vectors
    )
    out = head.fields(params, batch, 2, distance_sq)
    out.update(head.output_fields(params))
    out["sigma_again"] = head.uncertainty(params).sigma
    return out


@pytest.mark.parametrize("irreps", [VECTOR_IRREPS, SCALAR_IRREPS], ids=["1o-features", "geometric"])
@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_scripted_head_gives_the_eager_outputs_and_gradients(kind, irreps):
    head = make_head(kind, irreps, num_species=2, r_max=R_MAX, avg_num_neighbors=4.0)
    assert (head.geometry is not None) == (irreps == SCALAR_IRREPS)
    fit_random_statistics(head, num_species=2)
    head.variance_scale.set(0.6)
    head.eval()
    _, feats, forces, species, edge_index, edge_vectors, _ = _inputs(irreps)
    fit_narrow_output_range(head, feats, forces, species, edge_index, edge_vectors)  # clamps
    scripted = script_head(head)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert all(hasattr(scripted, m) for m in INFERENCE_METHODS)

    inputs = _inputs(irreps)
    for _ in range(3):  # past TorchScript's profiling runs, to the optimised graph
        _fields(scripted, _inputs(irreps))["forces_uncertainty"].sum().backward()
    eager, compiled = _fields(head, inputs), _fields(scripted, inputs)
    assert set(eager) == set(compiled)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-12, atol=1e-300, msg=key)
    assert bool((eager["forces_feature_distance"] > 0).all())
    # the gradient of sigma with respect to positions (UDD's bias forces), through the features,
    # the forces and (geometric front end) the edge vectors
    positions = inputs[0]
    (grad_eager,) = torch.autograd.grad(
        eager["forces_uncertainty"].sum(), positions, retain_graph=True
    )
    (grad_compiled,) = torch.autograd.grad(compiled["forces_uncertainty"].sum(), positions)
    assert grad_eager.abs().sum() > 0
    torch.testing.assert_close(grad_compiled, grad_eager, rtol=1e-12, atol=0.0)


def test_scripted_head_shares_the_heads_tensors():
    head = make_head("e2ip", VECTOR_IRREPS, num_species=2).eval()
    scripted = script_head(head)
    eager_state, scripted_state = head.state_dict(), scripted.state_dict()
    assert set(eager_state) <= set(scripted_state)  # TorchScript lists non-persistent buffers too
    for key, value in eager_state.items():
        assert scripted_state[key].data_ptr() == value.data_ptr(), key
    # fitting statistics and the recalibration scale on the head reaches the scripted module
    fit_random_statistics(head, num_species=2)
    head.variance_scale.set(0.25)
    inputs = _inputs(VECTOR_IRREPS)
    eager, compiled = _fields(head, inputs), _fields(scripted, inputs)
    assert torch.equal(eager["forces_uncertainty"], compiled["forces_uncertainty"])
    assert script_head(scripted) is scripted  # a ScriptModule is returned as it is


class _UnscriptableHead(torch.nn.Module):
    def forward(self, x):
        return {1: x} if x.sum() > 0 else [x]  # no single TorchScript type


class _HeadWithoutFields(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (_UnscriptableHead(), "the _UnscriptableHead head cannot be compiled with TorchScript"),
        (_HeadWithoutFields(), "does not export ['forward_with_distance', 'fields'"),
    ],
    ids=["unscriptable", "no-inference-methods"],
)
def test_heads_torchscript_cannot_run_give_one_line(head, message):
    with pytest.raises(ValueError) as err:
        script_head(head)
    text = str(err.value)
    assert message in text
    assert "torchscript_head=False" in text
    assert "\n" not in text
