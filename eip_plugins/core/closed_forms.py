"""The e3nn operations a head runs on every call, as a few dense matrix products.

On molecules of tens of atoms a head's cost is the number of tensor operations it dispatches, not
their arithmetic (:mod:`.inference`). e3nn's generated code for an ``o3.Linear``, an
``o3.ElementwiseTensorProduct`` and ``o3.SphericalHarmonics`` slices, reshapes and concatenates
per irrep and per path: ~100, ~70 and ~30 operations for the covariance head's sizes. The forms
here compute the same numbers in 3-6 operations each:

- :class:`IrrepBlockLinear`: the part of an ``o3.Linear`` that maps every input channel of one
  irrep to the output channels of that irrep, read from the e3nn module's own flat ``weight``
  (the e3nn module stays the parameter's owner: state dicts, checkpoints and optimisers see
  e3nn's layout);
- :func:`vector_square_basis`: the square v (x) v -> 0e + 2e of each channel of an
  ``ElementwiseTensorProduct`` of 1o channels, as the quadratic form (v v^T) : C;
- :func:`harmonics_basis`: e3nn's component-normalised spherical harmonics of degree 1 and 2 of
  a unit vector u, as [u, u u^T] @ B.

Every basis is read from the installed e3nn by evaluating its own modules or functions in
float64, so both supported e3nn versions (0.4.4 and 0.6) give their own conventions. Tested
against the e3nn modules in ``tests/core/test_closed_forms.py``.
"""

import torch
from torch import Tensor, nn

from ._e3nn import o3


class IrrepBlockLinear(nn.Module):
    """x (N, D_in) -> y (N, mul_out, ir.dim): output entry ``i_out`` of an ``o3.Linear``.

    With the input channels of that irrep gathered into x_ir (N, mul_in, ir.dim) (every input
    entry of the same irrep, in the order of the linear's instructions), y = W^T x_ir with
    W (mul_in, mul_out) the instructions' weight blocks, each times its path weight. The output
    entry's e3nn layout is ``y.reshape(N, mul_out * ir.dim)``.

    Args:
        linear: the ``o3.Linear`` (its instructions and ``weight`` layout); not stored.
        i_out: the index of the output entry in ``linear.irreps_out``.

    Forward:
        x (N, linear.irreps_in.dim), weight (linear.weight_numel,) -> (N, mul_out, ir.dim);
        zeros if no instruction reaches the entry.
    """

    def __init__(self, linear: nn.Module, i_out: int):
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(linear.irreps_in), o3.Irreps(linear.irreps_out)
        mul_out, ir = irreps_out[i_out]
        if getattr(linear, "internal_weights", True) is False:
            raise ValueError("IrrepBlockLinear reads a linear's own (internal, shared) weights")
        bias = getattr(linear, "bias", None)
        if bias is not None and bias.numel() > 0:
            raise ValueError("IrrepBlockLinear has no bias term: build the o3.Linear without one")
        feature_index, weight_index, coefficient = [], [], []
        slices, offset = irreps_in.slices(), 0
        for ins in linear.instructions:
            size = ins.path_shape[0] * ins.path_shape[1]
            if ins.i_out == i_out:
                mul_in = irreps_in[ins.i_in].mul
                start = slices[ins.i_in].start
                feature_index.extend(range(start, start + mul_in * ir.dim))
                weight_index.extend(range(offset, offset + size))  # (mul_in, mul_out) row-major
                coefficient.extend([float(ins.path_weight)] * mul_in)
            offset += size
        self.mul_in = len(coefficient)
        self.mul_out = int(mul_out)
        self.ir_dim = int(ir.dim)
        self.register_buffer("feature_index", torch.tensor(feature_index, dtype=torch.long), False)
        self.register_buffer("weight_index", torch.tensor(weight_index, dtype=torch.long), False)
        self.register_buffer(
            "coefficient", torch.tensor(coefficient, dtype=torch.float64)[:, None], False
        )

    def forward(self, x: Tensor, weight: Tensor) -> Tensor:
        n = x.shape[0]
        if self.mul_in == 0:
            return x.new_zeros(n, self.mul_out, self.ir_dim)
        w = weight.index_select(0, self.weight_index).reshape(self.mul_in, self.mul_out)
        w = w * self.coefficient.to(w.dtype)
        x_ir = x.index_select(1, self.feature_index)
        if self.ir_dim == 1:
            return (x_ir @ w).unsqueeze(-1)
        return torch.matmul(w.transpose(0, 1), x_ir.reshape(n, self.mul_in, self.ir_dim))


def vector_square_basis() -> Tensor:
    """C (9, 6) with e3nn's ``ElementwiseTensorProduct(Hx1o, Hx1o, ["0e", "2e"])`` of a channel
    v with itself equal to (v v^T).reshape(9) @ C: the 0e and the five 2e components, path
    weights included (the same for every H: each channel is its own path). Read from a one-channel
    e3nn module built in float64 (built in float32, e3nn's Clebsch-Gordan coefficients carry a
    1e-8 relative error)."""
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        square = o3.ElementwiseTensorProduct("1x1o", "1x1o", ["0e", "2e"])
        eye = torch.eye(3, dtype=torch.float64)
        left = eye.repeat_interleave(3, dim=0)  # rows (a, b) -> e_a
        right = eye.repeat(3, 1)  # rows (a, b) -> e_b
        basis = square(left, right).reshape(3, 3, 6)
    finally:
        torch.set_default_dtype(previous)
    return (0.5 * (basis + basis.transpose(0, 1))).reshape(9, 6).detach()


def harmonics_basis() -> Tensor:
    """B (12, 8) with e3nn's ``SphericalHarmonics("1x1o + 1x2e", normalize=True,
    normalization="component")`` of a unit vector u (E, 3) equal to cat([u, (u u^T).reshape(9)])
    @ B: its degree-1 part is linear in u, its degree-2 part a quadratic form (e3nn's polynomials
    without normalisation, read by polarisation), in float64."""
    eye = torch.eye(3, dtype=torch.float64)

    def polynomial(x: Tensor, degree: int) -> Tensor:
        return o3.spherical_harmonics(degree, x, normalize=False, normalization="component")

    basis = torch.zeros(12, 8, dtype=torch.float64)
    basis[:3, :3] = polynomial(eye, 1)
    single = polynomial(eye, 2)  # (3, 5): p(e_a)
    for a in range(3):
        for b in range(3):
            if a == b:
                basis[3 + 3 * a + b, 3:] = single[a]
            else:  # p(e_a + e_b) = p(e_a) + p(e_b) + 2 A_ab
                pair = polynomial((eye[a] + eye[b])[None], 2)[0]
                basis[3 + 3 * a + b, 3:] = 0.5 * (pair - single[a] - single[b])
    return basis
