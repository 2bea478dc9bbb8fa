"""The input contract: bad frames raise a clear error and leave every stream's state as it was."""

import pytest
import torch
from torch import nn

import fxsparse
from conftest import assert_close_scaled


def _net():
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).eval()


def _snapshot(sm):
    engine = sm._engine
    return {n: (v.buf.clone() if hasattr(v, "buf") else v.clone() if isinstance(v, torch.Tensor) else v)
            for n, v in engine.values.items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


BAD_FRAMES = [
    ("wrong rank", lambda: torch.rand(3, 16, 16), fxsparse.InputError, "4-D batch"),
    ("channels last", lambda: torch.rand(2, 16, 16, 3), fxsparse.InputError, "input channels"),
    ("integer dtype", lambda: torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), fxsparse.InputTypeError,
     "floating-point"),
    ("float64", lambda: torch.rand(2, 3, 16, 16, dtype=torch.float64), fxsparse.InputTypeError, "dtype"),
    ("frame size", lambda: torch.rand(2, 3, 20, 16), fxsparse.InputError, "reset"),
    ("batch size", lambda: torch.rand(3, 3, 16, 16), fxsparse.InputError, "reset"),
    ("nan", lambda: torch.rand(2, 3, 16, 16).index_fill_(2, torch.tensor([3]), float("nan")), fxsparse.InputError, "NaN"),
    ("inf", lambda: torch.rand(2, 3, 16, 16).index_fill_(3, torch.tensor([0]), float("inf")), fxsparse.InputError,
     "infinite"),
    ("numpy array", lambda: torch.rand(2, 3, 16, 16).numpy(), fxsparse.InputTypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("label,make,error,match", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frame_raises_and_keeps_state(label, make, error, match):
    net = _net()
    sm = fxsparse.transform(net)
    x0 = torch.rand(2, 3, 16, 16)
    sm(x0)
    x1 = x0.clone()
    x1[0, :, 2:5, 2:5] = 1.0
    sm(x1)
    before = _snapshot(sm)
    with pytest.raises(error, match=match):
        sm(make())
    _same(before, _snapshot(sm))
    x2 = x1.clone()
    x2[1, :, 9, 9] = 0.0
    with torch.no_grad():
        expected = net(x2)
    assert_close_scaled(sm(x2), expected)  # the streams go on as if nothing happened


def test_errors_are_value_and_type_errors():
    assert issubclass(fxsparse.InputError, ValueError)
    assert issubclass(fxsparse.InputTypeError, TypeError)


def test_reset_all_allows_new_batch_and_size():
    net = _net()
    sm = fxsparse.transform(net)
    sm(torch.rand(2, 3, 16, 16))
    sm.reset()
    x = torch.rand(3, 3, 24, 20)
    with torch.no_grad():
        expected = net(x)
    assert_close_scaled(sm(x), expected)
    assert sm.stats.dense and sm.num_streams == 3


def test_reset_one_stream_recomputes_only_that_stream():
    net = _net()
    sm = fxsparse.transform(net)
    x = torch.rand(2, 3, 16, 16)
    sm(x)
    sm.reset([1])
    with torch.no_grad():
        expected = net(x)
    assert_close_scaled(sm(x), expected)
    assert sm.stats.changed_fraction == [0.0, 1.0]
    with pytest.raises(fxsparse.InputError, match="holds 2 streams"):
        sm.reset([5])


def test_output_is_not_aliased_to_caches():
    net = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 8, 8)
    y0 = sm(x)
    kept = y0.clone()
    x2 = x.clone()
    x2[..., 0, 0] = 5
    sm(x2)
    assert torch.equal(y0, kept)
    assert y0.is_contiguous()


def test_input_is_never_modified():
    net = nn.Sequential(nn.ReLU(inplace=True)).eval()
    sm = fxsparse.transform(net)
    x = torch.randn(1, 3, 8, 8)
    kept = x.clone()
    sm(x)
    x2 = x.clone()
    sm(x2)
    assert torch.equal(x, kept)


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_threshold"):
        fxsparse.transform(_net(), input_threshold=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        fxsparse.transform(lambda x: x)


def test_nan_in_first_frame_raises_and_holds_no_state():
    sm = fxsparse.transform(_net())
    with pytest.raises(fxsparse.InputError, match="NaN"):
        sm(torch.full((1, 3, 8, 8), float("nan")))
    assert sm.num_streams == 0


@pytest.mark.parametrize("changed", ["little", "everything"])
def test_caller_reusing_its_frame_buffer_does_not_corrupt_state(changed):
    """Decoders often write every frame into the same tensor; fxsparse must keep its own copy."""
    net = _net()
    sm = fxsparse.transform(net)
    buffer = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    sm(buffer)
    for step in range(3):
        if changed == "everything":
            buffer.copy_(torch.rand_like(buffer))
        else:
            buffer[..., step, step] = 2.0
        with torch.no_grad():
            expected = net(buffer.clone())
        assert_close_scaled(sm(buffer), expected)


def test_unchanged_frames_return_fresh_copies_that_callers_may_modify():
    net = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(1, 3, 8, 8)
    first = sm(x)
    kept = first.clone()
    a = sm(x)  # unchanged
    a.add_(100.0)  # the caller mutates what it got
    b = sm(x)  # unchanged again
    assert b.data_ptr() != a.data_ptr() and b.is_contiguous()
    assert torch.equal(b, kept) and torch.equal(first, kept)
    x2 = x.clone()
    x2[..., 0, 0] = 5.0  # a change ends the frozen output
    with torch.no_grad():
        assert torch.allclose(sm(x2), net(x2), atol=1e-6)
    assert torch.allclose(sm(x2), net(x2), atol=1e-6)  # and a new one starts from the new state


def test_outputs_are_ordinary_nchw_tensors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    sm = fxsparse.transform(net)
    x = torch.rand(2, 3, 8, 8)
    for frame in (x, x, x + 0.1):  # dense, unchanged, changed
        out = sm(frame)
        assert not out.is_inference() and out.is_contiguous() and not out.requires_grad


class _DictHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return {"out": y, "aux": [y.mean((2, 3)), y.amax((2, 3))]}


def test_output_containers_are_plain_and_editable_like_the_models():
    """A caller post-processes outputs in place (out["out"] = ...), as with the dense model's dict."""
    torch.manual_seed(0)
    net = _DictHead().eval()
    sm = fxsparse.transform(net)
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    for x in (a, b, b):  # dense first frame, a sparse frame, an unchanged frame (the frozen output)
        out = sm(x)
        assert type(out) is dict and type(out["aux"]) is list
        out["out"] = out["out"].argmax(1)
        out["aux"].append(None)
    assert sm.stats.macs_executed == 0
    with torch.no_grad():
        assert_close_scaled(sm(b)["out"], net(b)["out"])  # the edits did not reach the module's state
