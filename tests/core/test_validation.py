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


def test_scalar_only_features_are_rejected():
    with pytest.raises(ValueError, match="vector \\(1o\\) node features.*16x0e"):
        build_head(HeadConfig(kind="e2ip"), "16x0e")
    with pytest.raises(ValueError, match="16x0e"):
        build_head(HeadConfig(kind="eip"), "16x0e")


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
