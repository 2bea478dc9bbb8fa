"""Note [Recycled outputs]: the caller's copies are written into buffers the caller has let go of, and never
into one it still holds (by a name, a list, a view or a numpy array). Every output equals the dense model's
for its frame, read back after later frames ran."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_direct_outputs import _Segmenter as _DirectSegmenter

import fxsparse
from conftest import assert_close_scaled
from fxsparse.output_pool import OutputPool


class _Segmenter(_DirectSegmenter):
    """test_direct_outputs' segmenter with two outputs: two pool slots."""

    def forward(self, x):
        out = super().forward(x)
        return {"out": out, "low": torch.sigmoid(out)}


def _frames(n=8):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 40)
    frames = [x]
    for i in range(1, n):
        f = frames[-1].clone()
        f[:, :, 3 * i : 3 * i + 4, 2 * i : 2 * i + 5] += 0.5  # a small mover
        frames.append(f if i % 3 else torch.rand(1, 3, 32, 40))  # and now and then a new scene
    return frames


def _expected(net, frames):
    with torch.no_grad():
        return [net(f.clone()) for f in frames]


def test_a_video_loop_reuses_two_buffers_per_output_and_every_output_is_right():
    net = _Segmenter().eval()
    frames = _frames()
    expected = _expected(net, frames)
    sm = fxsparse.transform(net)
    pointers = set()
    for f, e in zip(frames, expected):
        y = sm(f)  # the previous frame's y is held while this call runs, dropped right after
        assert_close_scaled(y, e)
        pointers.add(y["out"].data_ptr())
    assert len(pointers) == 2


def test_outputs_the_caller_keeps_are_never_overwritten():
    net = _Segmenter().eval()
    frames = _frames()
    expected = _expected(net, frames)
    sm = fxsparse.transform(net)
    kept = [sm(f) for f in frames]  # a list of every output
    for y, e in zip(kept, expected):
        assert_close_scaled(y, e)
    assert len({y["out"].data_ptr() for y in kept}) == len(frames)


def test_a_view_or_numpy_array_of_an_output_keeps_its_buffer_out_of_the_pool():
    net = _Segmenter().eval()
    frames = _frames()
    expected = _expected(net, frames)
    sm = fxsparse.transform(net)
    first_row = sm(frames[0])["out"][0, :, 5]  # only a view survives
    second = sm(frames[1])["out"].numpy()  # only an array survives
    for f in frames[2:]:
        sm(f)
    torch.testing.assert_close(first_row, expected[0]["out"][0, :, 5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, expected[1]["out"].numpy(), rtol=1e-5, atol=1e-6)


def test_a_caller_may_modify_its_output_in_place_before_dropping_it():
    net = _Segmenter().eval()
    frames = _frames()
    expected = _expected(net, frames)
    sm = fxsparse.transform(net)
    for f, e in zip(frames, expected):
        y = sm(f)
        assert_close_scaled(y, e)
        y["out"].mul_(-3.0).add_(1.0)  # e.g. post-processing in place
        y["low"] = None


def test_an_output_turned_into_a_leaf_that_needs_grad_is_not_recycled():
    pool = OutputPool()
    v = torch.ones(2, 3)
    a = pool.copy(0, v, torch.float32)
    a.requires_grad_()
    pool.copy(0, v, torch.float32)  # a is held: a second buffer
    a_ptr = a.data_ptr()
    del a  # the pool's reference is the last one, but the buffer now needs grad
    b = pool.copy(0, v * 2, torch.float32)
    assert b.data_ptr() != a_ptr and not b.requires_grad


def test_the_pool_forgets_its_oldest_buffer_when_every_one_is_held():
    pool = OutputPool(depth=2)
    held = [pool.copy(0, torch.full((4,), float(i)), torch.float32) for i in range(5)]
    assert [float(t[0]) for t in held] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(pool._buffers[0]) == 2
    del held[:]
    a = pool.copy(0, torch.full((4,), 7.0), torch.float32)  # the two it still tracks are free again
    b = pool.copy(0, torch.full((4,), 8.0), torch.float32)
    assert float(a[0]) == 7.0 and float(b[0]) == 8.0 and a.data_ptr() != b.data_ptr()


def test_bfloat16_compute_hands_back_float32_copies_from_the_pool():
    net = _Segmenter().eval()
    frames = _frames(5)
    expected = _expected(net, frames)
    sm = fxsparse.transform(net, dtype=torch.bfloat16)
    pointers = set()
    for f, e in zip(frames, expected):
        y = sm(f)
        assert y["out"].dtype == torch.float32
        torch.testing.assert_close(y["out"], e["out"], rtol=0.05, atol=0.05)
        pointers.add(y["out"].data_ptr())
    assert len(pointers) == 2


def test_outputs_made_under_inference_mode_are_not_reused_outside_it_or_the_reverse():
    """A caller's loop under torch.inference_mode() makes inference tensors; a later call outside it must
    neither write into one (torch forbids it) nor hand one back."""
    net = _Segmenter().eval()
    frames = _frames(6)
    expected = _expected(net, frames)
    sm = fxsparse.transform(net)
    with torch.inference_mode():
        for f in frames[:3]:
            y = sm(f)
            assert y["out"].is_inference()
    del y
    for f, e in zip(frames[3:], expected[3:]):
        y = sm(f)
        assert not y["out"].is_inference()
        assert_close_scaled(y, e)
    with torch.inference_mode():
        y = sm(frames[0])
        assert y["out"].is_inference()
        assert_close_scaled(y, expected[0])


@given(st.lists(st.sampled_from(["drop", "keep", "view", "numpy", "modify_drop"]), min_size=3, max_size=12),
       st.integers(0, 2**16))
def test_whatever_the_caller_holds_never_changes(actions, seed):
    """Random hold / release patterns: every output the caller still holds (a tensor, a view, a numpy array)
    keeps the value it had when returned, however many calls follow."""
    torch.manual_seed(seed)
    net = _Segmenter().eval()
    sm = fxsparse.transform(net)
    frames = [torch.rand(1, 3, 16, 20)]
    for i in range(len(actions)):
        f = frames[-1].clone()
        f[:, :, i % 13 : i % 13 + 3, 2 * i % 17 : 2 * i % 17 + 3] += 0.5
        frames.append(f)
    held = []
    for f, action in zip(frames, ["drop"] + actions):
        y = sm(f)["out"]
        if action == "keep":
            held.append((y, y.clone()))
        elif action == "view":
            held.append((y[0, 1:3], y[0, 1:3].clone()))
        elif action == "numpy":
            held.append((y.numpy(), y.numpy().copy()))
        elif action == "modify_drop":
            y.fill_(-1.0)
        del y
    sm(frames[0])  # and one more call after the last
    for value, snapshot in held:
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, snapshot)
        else:
            torch.testing.assert_close(value, snapshot, rtol=0, atol=0)
