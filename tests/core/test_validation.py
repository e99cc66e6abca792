"""Invalid settings raise ValueError naming the parameter and its value."""

import pytest
import torch

from eip_plugins.core import HeadConfig, UDDConfig, build_head, evidential_total_loss


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantile": 0.0}, "quantile=0.0"),
        ({"quantile": 1.2}, "quantile=1.2"),
        ({"quantile": float("nan")}, "quantile=nan"),
        ({"lam": -0.1}, "lam=-0.1"),
        ({"nu_w_floor": 4.0}, "nu_w_floor=4.0"),
        ({"nu_w_floor": 3.0}, "nu_w_floor=3.0"),
        ({"energy_weight": -1.0}, "energy_weight=-1.0"),
        ({"psi0": 0.0}, "psi0=0.0"),
        ({"kind": "ensemble"}, "kind='ensemble'"),
        ({"hidden": 0}, "hidden=0"),
    ],
)
def test_invalid_head_config(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        HeadConfig(**kwargs)


@pytest.mark.parametrize("field, value", [("A", -1.0), ("B", 0.0), ("D", -0.2), ("form", "cubic")])
def test_invalid_udd_config(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        UDDConfig(**{field: value})


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_scalar_only_features_need_the_cutoff_or_are_refused_with_never(kind):
    """Scalar-only features are read through the geometric front end, which needs r_max;
    geometric_features='never' refuses them, naming the irreps."""
    with pytest.raises(ValueError, match="16x0e.*needs the backbone's cutoff r_max"):
        build_head(HeadConfig(kind=kind), "16x0e")
    with pytest.raises(ValueError, match="'16x0e' have no vector \\(1o\\).*'never'"):
        build_head(HeadConfig(kind=kind, geometric_features="never"), "16x0e", r_max=5.0)
    head = build_head(HeadConfig(kind=kind), "16x0e", r_max=5.0)
    assert head.head_irreps == "16x0e+16x1o+16x2e"
    with pytest.raises(ValueError, match="pass edge_index and edge_vectors"):
        head(torch.randn(3, 16), torch.randn(3, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"geometric_features": "sometimes"}, "geometric_features='sometimes'"),
        ({"geometric_channels": 0}, "geometric_channels=0"),
    ],
)
def test_invalid_geometric_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadConfig(**kwargs)


@pytest.mark.parametrize("kind", ["eip", "e2ip", "mve"])
def test_mismatched_shapes(kind):
    head = build_head(HeadConfig(kind=kind), "4x0e + 4x1o")
    with pytest.raises(ValueError, match="node_feats has shape \\[3, 5\\]"):
        head(torch.randn(3, 5), torch.randn(3, 3))
    params = head(torch.randn(3, 16), torch.randn(3, 3))
    cfg = HeadConfig(kind=kind)
    with pytest.raises(ValueError, match="forces_ref has shape \\(2, 3\\)"):
        evidential_total_loss(
            head, params, torch.randn(2, 3), torch.zeros(1), torch.zeros(1), torch.ones(1), cfg
        )
    with pytest.raises(ValueError, match="energy_ref has shape \\(2,\\)"):
        evidential_total_loss(
            head, params, torch.randn(3, 3), torch.zeros(1), torch.zeros(2), torch.ones(1), cfg
        )
