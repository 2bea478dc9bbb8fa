"""fxsparse.tune and its metrics."""

import pytest
import torch
from torch import nn

import fxsparse
from conftest import moving_object_frames
from fxsparse.tune import box_f1, max_rel_error, mean_rel_error, miou, top1


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def _noisy_scene(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [x + 0.01 * torch.randn(x.shape, generator=g) for x in moving_object_frames(1, 48, 64, frames=n, seed=seed)]


def test_tune_meets_its_target_and_cuts_work():
    net = _net()
    frames = _noisy_scene(12)
    result = fxsparse.tune(net, frames, constraints={"max_rel_error": 0.05}, input_thresholds=(0, 0.03),
                           scales=(0, 0.1, 0.3, 1.0))
    assert result.chosen.ok and result.chosen.metrics["max_rel_error"] <= 0.05
    exact = [p for p in result.curve if p.input_threshold == 0 and p.scale == 0][0]
    assert result.chosen.executed_fraction < exact.executed_fraction  # thresholds do cut work here
    check = fxsparse.evaluate(net, frames, result.config, {"max_rel_error": 0.05})
    assert check.ok and check.executed_fraction == pytest.approx(result.chosen.executed_fraction)
    assert "chosen" in str(result)
    # the dense model's own frame-to-frame change, in the constraint's terms, is reported next to the target
    with torch.no_grad():
        dense = [net(x) for x in frames]
    own = max(max_rel_error(dense[i], dense[i - 1]) for i in range(1, len(dense)))
    assert result.dense_jitter["max_rel_error"] == pytest.approx(own)
    assert "dense model, consecutive frames: max_rel_error" in str(result)


def test_tune_rejects_bad_arguments_and_impossible_targets():
    net, frames = _net(), _noisy_scene(3)
    with pytest.raises(ValueError, match="constraints"):
        fxsparse.tune(net, frames)
    with pytest.raises(ValueError, match="unknown metrics"):
        fxsparse.tune(net, frames, metric="nope", target=1)
    with pytest.raises(ValueError, match="decode"):
        fxsparse.tune(net, frames, metric="box_f1", target=0.9)
    with pytest.raises(ValueError, match="no configuration"):
        fxsparse.tune(net, frames, metric="max_rel_error", target=-1.0, input_thresholds=(0,), scales=(0,))


def test_metrics():
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    assert top1(a, a) == 1.0 and top1(a, a.flip(1)) == 0.5
    assert max_rel_error(a, a) == 0 and mean_rel_error(a * 1.1, a) == pytest.approx(0.1)
    seg = torch.zeros(1, 2, 4, 4)
    seg[:, 1, :2] = 1
    # flipped: all class 0; IoU(class 0) = 8/16, IoU(class 1) = 0
    assert miou(seg, seg) == 1.0 and miou(seg, seg.flip(1)) == pytest.approx(0.25)
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    assert box_f1(boxes, boxes) == 1.0
    assert box_f1(boxes[:1], boxes) == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert box_f1(boxes + 100, boxes) == 0.0 and box_f1(boxes[:0], boxes[:0]) == 1.0


def test_base_config_is_kept_in_every_point_and_the_result():
    net = _net()
    frames = _noisy_scene(4)
    result = fxsparse.tune(net, frames, metric="max_rel_error", target=1.0, input_thresholds=(0.02,), scales=(0, 0.1),
                           base_config={"input_open": 1})
    assert result.config["input_open"] == 1 and result.config["input_threshold"] == 0.02
    sm = fxsparse.transform(net, **result.config)
    assert sm.input_policy.open == 1


def test_custom_metrics_mean_and_worst():
    net = _net()
    frames = _noisy_scene(5)

    def same_top(a, b):
        return float((a.argmax(1) == b.argmax(1)).float().mean())

    result = fxsparse.tune(
        net, frames, constraints={"top_mean": 0.5, "top_worst": 0.0},
        metrics={"top_mean": (same_top, True, "mean"), "top_worst": (same_top, True, "worst")},
        input_thresholds=(0,), scales=(0, 0.1),
    )
    assert set(result.chosen.metrics) == {"top_mean", "top_worst"}
    assert result.chosen.metrics["top_worst"] <= result.chosen.metrics["top_mean"]


def test_group_refinement_cuts_work_the_grid_cannot():
    """resnet18 on a noisy scene: one scale for all layers stops at 0.1; raising the deeper groups alone to
    0.3 keeps the error within target and executes less (measured: 94% -> 80% of dense MACs)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    g = torch.Generator().manual_seed(0)
    frames = [x + 0.01 * torch.randn(x.shape, generator=g) for x in moving_object_frames(1, 64, 80, frames=8)]
    result = fxsparse.tune(net, frames, constraints={"mean_rel_error": 0.03}, input_thresholds=(0,),
                           scales=(0, 0.03, 0.1, 0.3, 1.0), refine_groups=4)
    grid = [p for p in result.curve if p.group_scales is None and p.ok]
    assert result.chosen.ok and result.chosen.group_scales is not None
    assert result.chosen.executed_fraction < min(p.executed_fraction for p in grid)
    check = fxsparse.evaluate(net, frames, result.config, {"mean_rel_error": 0.03})
    assert check.ok and check.executed_fraction == pytest.approx(result.chosen.executed_fraction)
    assert "groups " in str(result)


def test_the_default_threshold_grid_follows_the_frames_units():
    """The default input-threshold grid is 0, 2, 4, 8, 16 on the 0-255 scale: k / 255 for float frames, k for
    uint8 frames fed to a model that converts them (Note [Integer frames])."""
    net = _net()
    floats = _noisy_scene(4)
    result = fxsparse.tune(net, floats, constraints={"max_rel_error": 10.0}, scales=(0,))
    assert sorted({p.input_threshold for p in result.curve}) == pytest.approx([0, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    pixels = [fxsparse.pixels.to_pixels(x) for x in floats]
    wrapped = nn.Sequential(fxsparse.PixelNormalize((0, 0, 0), (1, 1, 1)), net).eval()
    result = fxsparse.tune(wrapped, pixels, constraints={"max_rel_error": 10.0}, scales=(0,))
    assert sorted({p.input_threshold for p in result.curve}) == [0, 2, 4, 8, 16]
    assert "| 16/255 |" in str(result) and result.pixel_scale == 1.0
