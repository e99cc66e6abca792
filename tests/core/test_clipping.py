"""Clipping a head and its model apart (core/clipping.py): each group is clipped to the bound by
its own norm, exactly as ``clip_grad_norm_`` clips that group alone."""

import torch

from eip_plugins.core.clipping import clip_head_and_model_apart


def _params(seed: int, scales) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for scale in scales:
        p = torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
        p.grad = scale * torch.randn(4, 3, generator=g, dtype=torch.float64)
        params.append(p)
    return params


def test_each_group_is_clipped_by_its_own_norm():
    model, head = _params(0, [1.0, 3.0, 0.5]), _params(1, [50.0, 20.0])
    alone_model, alone_head = _params(0, [1.0, 3.0, 0.5]), _params(1, [50.0, 20.0])
    # interleaved, as an optimiser may hold them; the relative order of each group is kept
    parameters = [model[0], head[0], model[1], model[2], head[1]]
    norm = clip_head_and_model_apart(parameters, {id(p) for p in head}, 2.0)
    expected_norm = torch.nn.utils.clip_grad_norm_(alone_model, 2.0)
    torch.nn.utils.clip_grad_norm_(alone_head, 2.0)
    assert torch.equal(norm, expected_norm) and norm > 2.0
    for p, q in zip(model + head, alone_model + alone_head, strict=True):
        assert torch.equal(p.grad, q.grad)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in head]))
    torch.testing.assert_close(total, torch.tensor(2.0, dtype=torch.float64))


def test_without_head_parameters_it_is_plain_clipping_and_passes_options():
    params, alone = _params(2, [5.0, 5.0]), _params(2, [5.0, 5.0])
    norm = clip_head_and_model_apart(params, set(), 1.0, norm_type=1.0)
    expected = torch.nn.utils.clip_grad_norm_(alone, 1.0, norm_type=1.0)
    assert torch.equal(norm, expected)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(params, alone, strict=True))
