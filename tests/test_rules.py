"""Every change rule against a brute-force oracle, and its sparse lowering against the dense op."""

import pytest
import torch

import fxsparse
from conftest import assert_close_scaled
from fxsparse.rules import CHANGE_RULES
from rule_db import CASES, LEAVES


def _transform(case, **kw):
    torch.manual_seed(0)
    model = case.make().eval()
    return model, fxsparse.transform(model, leaf_modules=LEAVES.get(case.name, ()), **case.transform_kwargs, **kw)


def test_every_rule_has_a_case():
    covered = {case.target for case in CASES}
    missing = [rule.name for target, rule in CHANGE_RULES.items() if target not in covered]
    assert not missing, f"rules without a RuleCase in tests/rule_db.py: {missing}"


def _output_masks(sm):
    """Predicted change mask of the model output, per output tensor (flattened structure)."""
    engine = sm._engine
    out = engine.output_node.args[0]
    nodes = list(torch.fx.node.map_aggregate(out, lambda n: n) if not isinstance(out, torch.fx.Node) else [out])
    return [engine.masks[n] for n in nodes if isinstance(n, torch.fx.Node)]


def _flat(y):
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in _flat(v)]
    return [t for v in y for t in _flat(v)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_footprint_matches_brute_force(case):
    """Perturb one pixel; the outputs that really change must equal the predicted mask."""
    model, sm = _transform(case)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(case.shape, generator=g)
    sm(x)
    b, _, h, w = case.shape
    for y0, x0 in [(0, 0), (h - 1, w - 1), (h // 2, 1), (1, w // 2)]:
        x2 = x.clone()
        x2[b - 1, :, y0, x0] += 100.0  # large enough that a max-pool or relu sees it
        with torch.no_grad():
            before, after = _flat(model(x.clone())), _flat(model(x2.clone()))
        sm(x2)
        predicted = _output_masks(sm)
        for ya, yb, m in zip(before, after, predicted):
            really = (ya != yb).flatten(1) if m.dim() == 2 else (ya != yb).any(1, keepdim=True)
            m = m.bool().flatten(1) if m.dim() == 2 else m.bool()
            if m.dim() == 2:
                really = really.any(1, keepdim=True)
            assert not (really & ~m).any(), f"{case.name}: a change outside the predicted footprint"
            if case.exact_footprint:
                assert torch.equal(really, m), f"{case.name}: predicted footprint larger than the real one"
        sm(x)  # back to the base frame


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("tile", [1, 3, 8])
def test_sparse_lowering_equals_dense(case, tile):
    """Forced sparse path (dense_switch above 1) on random blobs in each stream."""
    model, sm = _transform(case, tile_size=tile, dense_switch=2.0)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(case.shape, generator=g)
    sm(x)
    b, c, h, w = case.shape
    for _ in range(3):
        x = x.clone()
        for s in range(b):
            y0, x0 = torch.randint(0, h, (2,), generator=g).tolist()[0], torch.randint(0, w, (1,), generator=g).item()
            x[s, :, y0 : y0 + 3, x0 : x0 + 2] = torch.rand(c, min(3, h - y0), min(2, w - x0), generator=g)
        with torch.no_grad():
            expected = model(x.clone())
        assert_close_scaled(sm(x), expected, case.name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_rule_runs_in_bfloat16(case):
    """transform(dtype=torch.bfloat16) through every rule, on sparse and full changes: float32 outputs within
    bfloat16 rounding of the float32 model (masks stay float32 whatever the compute dtype; a bfloat16
    input mask once broke conv_transpose2d's footprint, float32 tap weights the bilinear upsample)."""
    model, sm = _transform(case, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(case.shape, generator=g)
    b, _, h, w = case.shape
    frames = [x]
    for y0, x0 in [(h // 2, w // 2), (0, 0)]:
        x = x.clone()
        x[..., y0, x0] += 1.0
        frames.append(x)
    frames.append(torch.rand(case.shape, generator=g))
    for f in frames:
        out = _flat(sm(f))
        with torch.no_grad():
            ref = _flat(model(f.clone()))
        for o, r in zip(out, ref):
            if r.is_floating_point() and r.numel():
                assert o.dtype == r.dtype, case.name
                assert float((o - r).abs().max()) <= 0.03 * float(r.abs().max()) + 1e-3, case.name
