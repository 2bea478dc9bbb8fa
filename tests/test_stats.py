"""What ``stats`` reports: unchanged frames, exact receptive fields, cost bounds, per-stream fractions."""

import itertools

import pytest
import torch
from torch import nn

import fxsparse
from fxsparse.kernels.rows import RowCache

# (name in the graph, kernel, stride, padding, dilation) of a chain of window layers
CHAIN = [("0", 3, 1, 1, 1), ("2", 3, 2, 1, 1), ("3", 3, 2, 1, 1), ("4", 5, 1, 4, 2), ("5", 1, 1, 0, 1)]


def _chain_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(4, 3, 5, 1, 4, dilation=2),
        nn.Conv2d(3, 2, 1),
    ).eval()


def _enumerate_footprint(changed: set, k, s, p, d, in_hw):
    """Output positions whose window contains a changed input, by explicit enumeration."""
    h, w = in_hw
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    out = set()
    for oy, ox in itertools.product(range(ho), range(wo)):
        for a, b in itertools.product(range(k), range(k)):
            if (oy * s - p + a * d, ox * s - p + b * d) in changed:
                out.add((oy, ox))
                break
    return out, (ho, wo)


@pytest.mark.parametrize("pixel", [(0, 0), (0, 20), (16, 0), (16, 20), (7, 11), (1, 19)])
def test_one_pixel_marks_exactly_the_receptive_field(pixel):
    sm = fxsparse.transform(_chain_net())
    x = torch.rand(1, 2, 17, 21)
    sm(x)
    x2 = x.clone()
    x2[0, :, pixel[0], pixel[1]] += 1.0
    sm(x2)
    masks = sm.change_masks()
    changed, hw = {pixel}, (17, 21)
    for name, k, s, p, d in CHAIN:
        changed, hw = _enumerate_footprint(changed, k, s, p, d, hw)
        got = {tuple(i) for i in masks[name][0, 0].nonzero().tolist()}
        assert got == changed, f"layer {name}"


def test_unchanged_frame_costs_nothing_and_returns_cached_output():
    net = _chain_net()
    sm = fxsparse.transform(net)
    x = torch.rand(2, 2, 17, 21)
    y0 = sm(x)
    y1 = sm(x.clone())
    assert sm.stats.macs_executed == 0 and sm.stats.macs_cone == 0
    assert sm.stats.macs_dense > 0
    assert sm.stats.changed_fraction == [0.0, 0.0]
    assert torch.equal(y0, y1)


def test_first_frame_is_dense_and_stats_add_up():
    sm = fxsparse.transform(_chain_net())
    sm(torch.rand(1, 2, 17, 21))
    s = sm.stats
    assert s.dense and s.macs_executed == s.macs_dense == s.macs_cone
    assert s.macs_dense == sum(layer.macs_dense for layer in s.layers)
    assert s.cache_bytes > 0
    assert "total: dense" in str(s)


def test_cache_bytes_is_the_caches_memory_after_every_kind_of_frame():
    """cache_bytes is summed once per stream set (the caches keep their sizes): after sparse, unchanged, dense
    and partly reset frames it must still be every cache's bytes, the reference frame's and the outputs'."""
    sm = fxsparse.transform(_chain_net())
    x = torch.rand(2, 2, 17, 21)
    y = x.clone()
    y[:, :, 3:6, 4:9] += 1
    for frame, reset in ((x, None), (y, None), (y, None), (1 - y, None), (x, [1])):
        if reset:
            sm.reset(streams=reset)
        sm(frame)
        engine = sm._engine
        caches = sum(v.nbytes for v in engine.values.values() if isinstance(v, RowCache))
        assert caches > 0 and sm.stats.cache_bytes == engine.cache_bytes() >= caches + x.numel() * 4


def test_macs_dense_counts_conv_macs():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()
    sm = fxsparse.transform(net)
    sm(torch.rand(2, 3, 10, 12))
    assert sm.stats.macs_dense == 2 * 10 * 12 * 8 * 3 * 9


def test_streams_keep_separate_masks():
    sm = fxsparse.transform(_chain_net())
    x = torch.rand(3, 2, 17, 21)
    sm(x)
    x2 = x.clone()
    x2[1, :, 5, 5] += 1
    sm(x2)
    assert sm.stats.changed_fraction[0] == 0 and sm.stats.changed_fraction[2] == 0
    assert sm.stats.changed_fraction[1] == pytest.approx(1 / (17 * 21))
    first = sm.change_masks()["0"]
    assert first[0].sum() == 0 and first[2].sum() == 0 and first[1].sum() == 9


def test_coverage_lists_every_node_and_fallback_reasons():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=3)

    net = nn.Sequential(nn.Conv2d(3, 3, 3), Odd(), nn.ReLU()).eval()
    sm = fxsparse.transform(net)
    report = sm.coverage()
    text = str(report)
    assert "cumsum" in text and "DENSE FALLBACK" in text
    assert [e.name for e in report.fallbacks] == ["cumsum"]
    assert "1 fall back to dense" in text
    x = torch.rand(1, 3, 9, 9)
    sm(x)
    x2 = x.clone()
    x2[..., 0, 0] = 3
    with torch.no_grad():
        expected = net(x2)
    out = sm(x2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_auto_dense_switch_is_exact_and_reported():
    net = _chain_net()
    sm = fxsparse.transform(net, dense_switch="auto")
    x = torch.rand(2, 2, 17, 21)
    for i in range(4):
        if i:
            x = x.clone()
            x[i % 2, :, 3 * i : 3 * i + 4, 5:9] = torch.rand(2, 4, 4)
        with torch.no_grad():
            expected = net(x)
        assert torch.allclose(sm(x), expected, atol=1e-5)
    report = str(sm.coverage())
    assert "dense above" in report
    with pytest.raises(ValueError, match="auto"):
        fxsparse.transform(net, dense_switch="sometimes")


def test_median_rows_take_each_timing_and_ratio_across_processes():
    from fxsparse.bench import BenchRow, median_rows

    def row(dense, sparse, scene="synthetic 1%"):
        return BenchRow("m", "8x8", scene, 0.01, "eager", dense, sparse, dense / sparse, 4.0, dense / sparse / 4.0,
                        1.1, 0.01, 1.0, 5.0, 8, engines_ms={"e": dense / 2})

    runs = [[row(40.0, 20.0), row(80.0, 40.0, "synthetic 5%")], [row(70.0, 20.0), row(80.0, 20.0, "synthetic 5%")],
            [row(50.0, 25.0), row(90.0, 30.0, "synthetic 5%")]]
    first, second = median_rows(runs)
    assert (first.dense_ms, first.sparse_ms, first.speedup, first.processes) == (50.0, 20.0, 2.0, 3)
    assert first.speedup_range == (2.0, 3.5) and first.engines_ms == {"e": 25.0}
    assert second.scene == "synthetic 5%" and second.speedup == 3.0  # the per-process ratios' median
    with pytest.raises(ValueError, match="different scenes"):
        median_rows([[row(1.0, 1.0)], [row(1.0, 1.0, "other")]])


def test_dense_engines_reproduce_the_model_and_leave_no_files(tmp_path, monkeypatch):
    """The benchmark's other engines (ONNX Runtime, OpenVINO, whichever is installed) compute the model's output
    (float32 ones to float rounding), and the ONNX file they were built from is gone afterwards."""
    pytest.importorskip("onnx")
    from fxsparse.bench import dense_engines

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.rand(1, 3, 16, 16)
    engines = dense_engines(net, x)
    if not engines:
        pytest.skip("neither ONNX Runtime nor OpenVINO installed")
    with torch.no_grad():
        expected = net(x)
    for name, run in engines.items():
        out = torch.from_numpy(run(x)[0])
        tolerance = 1e-5 if name.endswith("f32") else 2e-2  # OpenVINO's bfloat16 default where the CPU has it
        assert float((out - expected).abs().max()) <= tolerance * float(expected.abs().max()), name
    assert list(tmp_path.iterdir()) == []
