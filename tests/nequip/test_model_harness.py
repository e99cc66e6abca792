"""NequIP's own model test harness, run on the evidential NequIP models.

``nequip.utils.unittests``: ``ASEIntegrationMixin`` -> ``EnergyModelTestsMixin`` ->
``BasicModelTestsMixin`` (init, forward, equivariance of every registered output field incl. the
uncertainty fields and Cartesian covariances, batching, periodic images, large separation,
cross-frame gradients, numeric gradients, partial forces, force smoothness at the cutoff,
isolated atoms, embedding cutoff, ``nequip-compile`` + ASE). Not included, see README:
``TrainTimeCompileMixin`` (skips itself on CPU) and ``LAMMPSMLIAPIntegrationMixin`` (needs LAMMPS).

Budget: the harness's ``test_ase_compile`` trains, packages and AOTInductor-compiles a model per
parameter set, so it runs once (e2ip on an ``l_max: 0`` model, float32, from a ``nequip-package``
file) in :class:`TestE2IPCompileHarness`; the l >= 1 models compile in ``conftest.Runs``. The
cheap tests run for every head and both dtypes, and for e2ip/eip on ``l_max: 0`` (scalar-only)
models, whose heads build their vector features from the neighbour list.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nequip.data import AtomicDataDict
from nequip.nn import ForceStressOutput, PartialForceOutput
from nequip.utils.test import assert_AtomicData_equivariant
from nequip.utils.unittests.model_tests_ase_integration import ASEIntegrationMixin
from nequip.utils.unittests.model_tests_basic import EnergyModelTestsMixin

from eip_plugins.core import keys
from eip_plugins.nequip import EvidentialHeadOutput, NequIPUQCalculator

BASE_CONFIG = {
    "_target_": "eip_plugins.nequip.EvidentialNequIPGNNModel",
    "seed": 123,
    "type_names": ["H", "C", "O"],
    "r_max": 4.0,
    "num_layers": 2,
    "l_max": 1,
    "parity": True,
    "num_features": 8,
    "radial_mlp_depth": 1,
    "radial_mlp_width": 8,
    "avg_num_neighbors": 10.0,
    "per_type_energy_scales": {"H": 1.0, "C": 1.5, "O": 2.0},
    "per_type_energy_shifts": {"H": -1.0, "C": -3.0, "O": -5.0},
    "head_options": {"hidden": 8},
}


def _config(head: str, l_max: int = 1) -> dict:
    config = copy.deepcopy(BASE_CONFIG)
    config["head"] = head
    config["l_max"] = l_max
    return config


class _EvidentialHarness(ASEIntegrationMixin):
    head = "e2ip"
    l_max = 1

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return _config(cls.head, cls.l_max)

    @pytest.fixture
    def strict_locality(self):
        return False  # message passing

    # compiled once for the whole suite, in TestE2IPCompileHarness
    test_ase_compile = None

    @pytest.fixture(scope="class")
    @classmethod
    def partial_model(cls, model, device):
        """The harness swaps the top-level ``ForceStressOutput`` for ``PartialForceOutput``;
        here the force module sits inside the head wrapper, so swap it there (the head then
        runs on the partial-force model's total forces, as it does on the full model's)."""
        _, config, _ = model
        aux_model = cls.make_model(copy.deepcopy(config), device=device)
        wrapper = aux_model.model
        assert isinstance(wrapper, EvidentialHeadOutput)
        assert isinstance(wrapper.func, ForceStressOutput)
        wrapper.func = PartialForceOutput(wrapper.func.func)
        return aux_model, set(wrapper.irreps_out) | set(wrapper.func.irreps_out)

    def test_uncertainty_fields_present(self, model, model_test_data):
        instance, _, out_fields = model
        out = instance(model_test_data)
        n = out[AtomicDataDict.POSITIONS_KEY].shape[0]
        g = AtomicDataDict.num_frames(out)
        assert out[keys.FORCES_UNCERTAINTY].shape == (n,)
        assert out[keys.FORCES_EPISTEMIC_COV].shape == (n, 3, 3)
        assert out[keys.UNCERTAINTY].shape == (g,)
        assert torch.isfinite(out[keys.UNCERTAINTY_MAX]).all()
        assert "eip_head_features" not in out


class TestE2IPModel(_EvidentialHarness):
    head = "e2ip"


class _Float64Only:
    """The other heads run the cheap harness in float64 only (suite budget)."""

    @pytest.fixture(scope="class", params=["float64"])
    @classmethod
    def model_dtype(cls, request):
        return request.param


class TestMVEModel(_Float64Only, _EvidentialHarness):
    head = "mve"


class TestEIPModel(_Float64Only, _EvidentialHarness):
    """The eIP head is the paper's deliberately non-equivariant baseline (SPEC §1a).

    Its fields declare no rotation behaviour, so the harness's equivariance test checks the
    backbone outputs (energy, forces, stress) only; the test below pins the non-equivariance.
    """

    head = "eip"

    def test_eip_fields_are_not_rotation_equivariant(self, model, atomic_batch):
        instance, _, _ = model
        data = AtomicDataDict.frame_from_batched(atomic_batch, 0)
        instance.irreps_out[keys.EIP_BETA] = "1o"  # claim (wrongly) that beta rotates as a vector
        try:
            with pytest.raises(AssertionError, match="eip_beta"):
                assert_AtomicData_equivariant(instance, data, e3_tolerance=1e-6)
        finally:
            instance.irreps_out.pop(keys.EIP_BETA)


class TestE2IPScalarModel(_Float64Only, _EvidentialHarness):
    """``l_max: 0``: every NequIP feature is a scalar; the head reads the last layer and builds
    1o/2e features from the neighbour list (equivariance of the covariances, smoothness, periodic
    images and isolated atoms are the harness's tests)."""

    head = "e2ip"
    l_max = 0

    def test_head_builds_geometric_features(self, model):
        instance, _, _ = model
        head = instance.model.head
        assert head.geometry is not None
        assert head.irreps_in == "8x0e" and head.head_irreps == "8x0e+16x1o+16x2e"


class TestE2IPL2Model(_Float64Only, _EvidentialHarness):
    """``l_max: 2``: the head reads the 1o and 2e node features of layer0 (no geometric
    features)."""

    head = "e2ip"
    l_max = 2


class TestE2IPAllLayersModel(_Float64Only, _EvidentialHarness):
    """``feature_layer: all`` (config_with_eip's default): the head reads every convnet layer's
    node features, concatenated through a chain of taps, none of whose fields is an output."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return {**_config("e2ip"), "feature_layer": "all"}

    def test_head_reads_every_layer(self, model, model_test_data):
        instance, _, _ = model
        network = instance.model.func.func
        names = [name for name, _ in network.named_children()]
        tap = names.index("eip_head_features_layer0_convnet")
        assert names[tap - 1 : tap + 3] == [
            "layer0_convnet",
            "eip_head_features_layer0_convnet",
            "layer1_convnet",
            "eip_head_features",
        ]
        layers = [network.layer0_convnet, network.layer1_convnet]
        irreps = [str(m.irreps_out[AtomicDataDict.NODE_FEATURES_KEY]) for m in layers]
        assert instance.model.head.irreps_in == "+".join(irreps)
        out = instance(model_test_data)
        assert not [k for k in out if k.startswith("eip_head_features")]

    def test_unset_feature_layer_reads_one_layer(self, config):
        """Without the key (checkpoints saved before ``all`` existed) the builder keeps its
        old default: one layer, the one before the last when it has 1o features."""
        legacy = {k: v for k, v in config.items() if k != "feature_layer"}
        instance = self.make_model({**legacy, "model_dtype": "float64"}, device="cpu")
        network = instance.model.func.func
        names = [name for name, _ in network.named_children()]
        assert [n for n in names if n.startswith("eip_head_features")] == ["eip_head_features"]
        tapped = names[names.index("eip_head_features") - 1]
        assert tapped == ("layer0_convnet" if config["l_max"] >= 1 else "layer1_convnet")


class TestE2IPAllLayersScalarModel(TestE2IPAllLayersModel):
    """``feature_layer: all`` on ``l_max: 0``: every layer's scalars, plus the geometric 1o/2e
    features."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return {**_config("e2ip", l_max=0), "feature_layer": "all"}


class TestEIPScalarModel(_Float64Only, _EvidentialHarness):
    head = "eip"
    l_max = 0
    test_eip_fields_are_not_rotation_equivariant = (
        TestEIPModel.test_eip_fields_are_not_rotation_equivariant
    )


ALLEGRO_CONFIG = {
    "_target_": "eip_plugins.nequip.EvidentialAllegroModel",
    "seed": 123,
    "type_names": ["H", "C", "O"],
    "r_max": 4.0,
    "l_max": 1,
    "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 4},
    "radial_chemical_embed_dim": 8,
    "num_layers": 1,
    "num_scalar_features": 8,
    "num_tensor_features": 4,
    "allegro_mlp_hidden_layers_width": 8,
    "readout_mlp_hidden_layers_width": 8,
    "avg_num_neighbors": 10.0,
    "per_type_energy_scales": {"H": 1.0, "C": 1.5, "O": 2.0},
    "per_type_energy_shifts": {"H": -1.0, "C": -3.0, "O": -5.0},
    "head_options": {"hidden": 8},
}


class TestE2IPAllegroModel(_Float64Only, _EvidentialHarness):
    """An Allegro backbone (nequip-allegro): the head sums its per-edge scalar latents around
    each atom and builds vector features from the neighbour list."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        return {**copy.deepcopy(ALLEGRO_CONFIG), "head": "e2ip"}

    def test_head_reads_the_edge_latents(self, model):
        instance, _, _ = model
        network = instance.model.func.func
        names = [name for name, _ in network.named_children()]
        assert names[names.index("eip_head_features") - 1] == "allegro"
        assert instance.model.head.geometry is not None


def _test_names(cls) -> set[str]:
    return {n for c in cls.__mro__ for n in vars(c) if n.startswith("test_")}


class TestE2IPCompileHarness(ASEIntegrationMixin):
    """``test_ase_compile``: nequip-train -> nequip-package -> nequip-compile --target ase_uq,
    then checkpoint/package vs compiled calculators (energy, forces and uncertainties), on an
    ``l_max: 0`` model (the geometric features go through packaging and AOTInductor)."""

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls):
        config = _config("e2ip", l_max=0)
        config["forces_rms"] = 1.0
        return config

    @pytest.fixture(scope="class", params=["float32"])
    @classmethod
    def model_dtype(cls, request):
        return request.param

    @pytest.fixture(scope="class", params=["minimal_toy_emt.yaml"])
    @classmethod
    def conffile(cls, request):
        return request.param  # minimal_aspirin.yaml downloads its data (no network here)

    @pytest.fixture(scope="class", params=["package"])
    @classmethod
    def model_source(cls, request):
        return request.param

    @pytest.fixture(scope="class")
    @classmethod
    def ase_calculator_cls(cls):
        return NequIPUQCalculator

    @pytest.fixture(scope="class")
    @classmethod
    def ase_aoti_target(cls):
        return "ase_uq"

    @pytest.fixture(scope="class")
    @classmethod
    def ase_properties_to_compare(cls):
        return [
            "energy",
            "forces",
            keys.FORCES_UNCERTAINTY,
            keys.FORCES_EPISTEMIC_COV,
            keys.FORCES_ALEATORIC_COV,
            keys.UNCERTAINTY,
            keys.UNCERTAINTY_MAX,
        ]

    @pytest.fixture
    def strict_locality(self):
        return False

    def model_parameter_updates(self, model_config):
        updates = super().model_parameter_updates(model_config)
        updates["forces_rms"] = "${training_data_stats:forces_rms}"
        return updates


# the cheap tests already ran in the classes above: keep only the compile test here
for _name in _test_names(EnergyModelTestsMixin):
    setattr(TestE2IPCompileHarness, _name, None)
