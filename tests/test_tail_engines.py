"""Note [Tail engines]: a dense tail run by OpenVINO equals the dense model (float32) or stays within
bfloat16's error ("openvino-bf16") on every kind of frame, streams changing alone or together; bad choices
are refused at transform time."""

import pytest
import torch

import fxsparse
from conftest import assert_close_scaled, with_blob
from netgen import SqueezeExciteNet

pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'fxsparse[openvino]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'fxsparse[openvino]')")


def _frames(x):
    frames = [x, with_blob(x, 1, 4, 5), with_blob(with_blob(x, 1, 12, 5), 0, 10, 20)]  # stream 1 alone, then both
    return frames + [frames[-1], 1.0 - frames[-1], with_blob(1.0 - frames[-1], 0, 2, 2)]  # unchanged, full, partial


@pytest.mark.parametrize("engine,tolerance", [("openvino", None), ("openvino-bf16", 3e-2)])
def test_an_openvino_tail_follows_the_dense_model(engine, tolerance):
    torch.manual_seed(0)
    net = SqueezeExciteNet().eval()
    sm = fxsparse.transform(net, tail_engine=engine)
    for i, f in enumerate(_frames(torch.rand(2, 3, 24, 32))):
        with torch.no_grad():
            expected, out = net(f), sm(f)
        if tolerance is None:
            assert_close_scaled(out, expected, f"frame {i}")
        else:  # bfloat16 inside the tail: relative to the output's scale
            assert float((out - expected).abs().max()) <= tolerance * float(expected.abs().max()), i
    engine_run = sm._engine._tail_run
    assert type(engine_run).__name__ == "OpenVinoTail" and sorted(engine_run._compiled) == [1, 2]  # per batch
    calls = []
    sm._engine._tail_run = lambda *args: (calls.append(len(args)), engine_run(*args))[1]
    with torch.no_grad():
        out, expected = sm(f + 0.5), net(f + 0.5)
    assert sm.stats.dense and len(calls) == 1  # dense frames run the tail on its engine too
    if tolerance is None:
        assert_close_scaled(out, expected, "a dense frame")


def test_an_openvino_tail_runs_a_torchvision_segmenter():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    sm = fxsparse.transform(model, tail_engine="openvino")
    x = torch.rand(1, 3, 64, 96)
    for i, f in enumerate([x, with_blob(x, 0, 10, 20), with_blob(x, 0, 30, 40)]):
        with torch.no_grad():
            assert_close_scaled(sm(f), model(f), f"frame {i}")


def test_tail_engine_choices_are_checked(monkeypatch):
    net = SqueezeExciteNet().eval()
    with pytest.raises(ValueError, match="tail_engine='tensorrt'"):
        fxsparse.transform(net, tail_engine="tensorrt")
    with pytest.raises(ValueError, match="float32 graph"):
        fxsparse.transform(net, tail_engine="openvino", dtype=torch.bfloat16)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs openvino\. Hint: pip install 'fxsparse\[openvino\]'"):
        fxsparse.transform(net, tail_engine="openvino")
    monkeypatch.undo()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()  # no tail: nothing to compile
    sm = fxsparse.transform(plain, tail_engine="openvino")
    x = torch.rand(1, 3, 8, 8)
    sm(x)
    with torch.no_grad():
        assert_close_scaled(sm(with_blob(x, 0, 2, 2)), plain(with_blob(x, 0, 2, 2)))


def test_auto_keeps_the_faster_of_torch_and_openvino(monkeypatch):
    torch.manual_seed(0)
    net = SqueezeExciteNet().eval()
    sm = fxsparse.transform(net, tail_engine="auto")
    frames = _frames(torch.rand(2, 3, 24, 32))
    for i, f in enumerate(frames[:3]):
        with torch.no_grad():
            assert_close_scaled(sm(f), net(f), f"frame {i}")
    engine = sm._engine
    times = engine.tail_engine_times
    assert sorted(times) == ["openvino", "torch"] and engine.tail_engine == min(times, key=times.get)
    assert f"on {engine.tail_engine} (measured: " in str(sm.coverage())
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    sm = fxsparse.transform(net, tail_engine="auto")  # without OpenVINO: PyTorch, nothing measured
    sm(frames[0])
    assert sm._engine.tail_engine == "torch" and sm._engine.tail_engine_times is None
    sm = fxsparse.transform(net, tail_engine="auto", dtype=torch.bfloat16)  # bfloat16: PyTorch's graph
    sm(frames[0])
    assert sm._engine.tail_engine == "torch"
