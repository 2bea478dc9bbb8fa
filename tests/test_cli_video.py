"""fxsparse analyze / run / bench on small inputs: a generated clip and CDnet highway frames."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fxsparse.cli import main

av = pytest.importorskip("av")
HIGHWAY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cdnet_highway")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 48x64 mp4 of 8 frames: a bright square moving over a gradient."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        base = np.tile(np.linspace(0, 200, 64, dtype=np.uint8), (48, 1))
        for i in range(8):
            img = np.stack([base] * 3, -1)
            img[10:20, 5 + 5 * i : 15 + 5 * i] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def seg_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "seg.py"
    path.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.Conv2d(8, 3, 3, padding=1))\n"
    )
    return f"{path}:build"


def _decoded_frames(path):
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def test_analyze_clip_writes_report_with_plots(clip, tmp_path):
    out = tmp_path / "an"
    result = CliRunner().invoke(main, ["analyze", clip, "--model", "builtin:tiny", "--thresholds", "0,8,32",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert html.count('<img alt="') == 4 and "data:image/png;base64," in html  # 3 plots + cone speedup
    for name in ("heatmap.png", "histogram.png", "changed_over_time.png", "cone_speedup.png", "frames.csv"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["fps"] == pytest.approx(10.0)
    t0, t32 = summary["thresholds"]["0"], summary["thresholds"]["32"]
    assert t0["median_changed"] >= t32["median_changed"] > 0  # the square moves: some pixels change
    assert t32["median_cone_speedup"] >= 1.0
    assert summary["dense_tail"] is None  # builtin:tiny has no global mean


@pytest.mark.skipif(not os.path.isdir(HIGHWAY), reason="shared CDnet highway frames not present")
def test_analyze_cdnet_folder(tmp_path):
    out = tmp_path / "an"
    result = CliRunner().invoke(main, ["analyze", HIGHWAY, "--limit", "6", "--size", "60x80", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "threshold  16" in result.output
    rows = (out / "frames.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * 4  # header + 5 frame pairs x 4 default thresholds


@pytest.mark.parametrize("mode", ["exact", "threshold", "patch"])
def test_run_writes_playable_video_and_json(clip, seg_model_file, tmp_path, mode):
    video = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["run", clip, "--model", seg_model_file, "--mode", mode, "--compare-dense",
                                       "--out", str(video)])
    assert result.exit_code == 0, result.output
    assert _decoded_frames(str(video)) == 8
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all("dense_ms" in r and "sparse_ms" in r for r in records)
    if mode == "exact":
        assert max(r["max_rel_error"] for r in records) < 1e-4
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["frames"] == 8 and "speedup_of_medians" in summary and "energy_method" in summary


@pytest.mark.skipif(not os.path.isdir(HIGHWAY), reason="shared CDnet highway frames not present")
def test_analyze_with_clean_up_shows_fewer_changes_on_noisy_footage(tmp_path):
    """--clean-up simulates the mask clean-up for thresholds above 0: on the highway clip it removes the noise
    specks (fewer changed pixels, a larger cone-ideal speedup); threshold 0 stays as it was."""
    args = ["analyze", HIGHWAY, "--model", "builtin:tiny", "--thresholds", "0,16", "--limit", "6", "--size", "60x80"]
    plain = CliRunner().invoke(main, args + ["--out", str(tmp_path / "plain")])
    cleaned = CliRunner().invoke(main, args + ["--clean-up", "--out", str(tmp_path / "clean")])
    assert plain.exit_code == 0 and cleaned.exit_code == 0, plain.output + cleaned.output
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("plain", "clean"))
    assert b["clean_up"] and not a["clean_up"] and "threshold  16 + clean-up" in cleaned.output
    assert a["thresholds"]["0"] == b["thresholds"]["0"]
    assert b["thresholds"]["16"]["median_changed"] < a["thresholds"]["16"]["median_changed"]
    assert b["thresholds"]["16"]["median_cone_speedup"] > a["thresholds"]["16"]["median_cone_speedup"]


@pytest.mark.skipif(not os.path.isdir(HIGHWAY), reason="shared CDnet highway frames not present")
def test_run_on_cdnet_folder_with_classifier(tmp_path):
    video = tmp_path / "o.avi"
    result = CliRunner().invoke(main, ["run", HIGHWAY, "--model", "builtin:tiny", "--limit", "4", "--size", "60x80",
                                       "--out", str(video)])
    assert result.exit_code == 0, result.output
    assert _decoded_frames(str(video)) == 4
    # exact mode on this noisy footage: nearly every pixel changes, every frame runs as one dense pass,
    # and the run says so instead of letting a speedup look like skipped work
    assert json.loads((tmp_path / "o.summary.json").read_text())["dense_frames"] == 3
    assert "3 of 3 frames changed in most pixels" in result.output
    result = CliRunner().invoke(main, ["run", HIGHWAY, "--model", "builtin:tiny", "--limit", "4", "--size", "60x80",
                                       "--mode", "threshold", "--threshold", "16", "--out", str(tmp_path / "t.avi")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.summary.json").read_text())["dense_frames"] == 0
    assert "dense pass" not in result.output


def test_run_threshold_mode_with_clean_up(clip, seg_model_file, tmp_path):
    """--clean-up gives threshold mode the input mask's clean-up; with another mode it is refused before any
    output file exists."""
    from fxsparse.input_policy import CLEAN_UP
    from fxsparse.run import make_runner

    result = CliRunner().invoke(main, ["run", clip, "--model", seg_model_file, "--mode", "threshold", "--threshold",
                                       "16", "--clean-up", "--out", str(tmp_path / "c.avi")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c.summary.json").read_text())["frames"] == 8
    policy = make_runner(torch.nn.Conv2d(3, 4, 3), "threshold", 16, clean_up=True).input_policy
    assert (policy.open, policy.min_area, policy.dilate) == tuple(CLEAN_UP.values())
    result = CliRunner().invoke(main, ["run", clip, "--model", seg_model_file, "--clean-up",
                                       "--out", str(tmp_path / "e.avi")])
    assert result.exit_code == 2 and "--mode threshold" in result.output
    assert not (tmp_path / "e.avi").exists()


def test_interrupted_run_leaves_playable_outputs(clip, seg_model_file, tmp_path, monkeypatch):
    import fxsparse.video as video_mod

    real = video_mod.read_frames

    def three_then_ctrl_c(*args, **kwargs):
        for i, frame in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(video_mod, "read_frames", three_then_ctrl_c)
    video = tmp_path / "cut.mp4"
    result = CliRunner().invoke(main, ["run", clip, "--model", seg_model_file, "--out", str(video)])
    assert result.exit_code == 130
    assert "interrupted after 3 frames" in result.output
    assert _decoded_frames(str(video)) == 3
    lines = (tmp_path / "cut.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2]


def test_run_errors_are_one_line(clip, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(tmp_path / "missing.mp4"), "--model", "builtin:tiny"])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["run", clip, "--model", "torchvision:not_a_model", "--out", str(tmp_path / "x.mp4")])
    assert r.exit_code == 2 and "error:" in r.output
    r = runner.invoke(main, ["analyze", clip, "--thresholds", "0,999", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "0-255" in r.output


def test_frame_size_change_mid_stream_is_a_clear_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, size in enumerate([(32, 24), (32, 24), (40, 24)]):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8)).save(folder / f"in{i:06d}.png")
    video = tmp_path / "o.mp4"
    r = CliRunner().invoke(main, ["run", str(folder), "--model", "builtin:tiny", "--out", str(video)])
    assert r.exit_code == 2 and "--size" in r.output and "Traceback" not in r.output
    assert _decoded_frames(str(video)) == 2  # the frames before the change are kept, playable


def test_run_with_bfloat16_and_chains(clip, tmp_path):
    video = tmp_path / "o.avi"
    result = CliRunner().invoke(main, ["run", clip, "--model", "builtin:tiny", "--dtype", "bfloat16", "--fuse-chains",
                                       "--compare-dense", "--out", str(video)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == _decoded_frames(str(video)) > 0
    assert 0 < max(r["max_rel_error"] for r in records) < 0.05  # bfloat16 rounding, not exact


def test_patch_mode_rejects_transform_options(clip, tmp_path):
    r = CliRunner().invoke(main, ["run", clip, "--model", "builtin:tiny", "--mode", "patch", "--dtype", "bfloat16",
                                  "--out", str(tmp_path / "o.avi")])
    assert r.exit_code == 2 and "patch mode" in r.output and "Traceback" not in r.output


def test_bench_command(tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", "--model", "builtin:tiny", "--size", "64x64", "--fractions", "0.05",
                                  "--frames", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert rows[0]["model"] == "builtin:tiny" and rows[0]["cone_speedup"] >= 1.0



def test_bench_in_bfloat16_compares_like_with_like(tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", "--model", "builtin:tiny", "--size", "64x64", "--fractions", "0.05",
                                  "--frames", "3", "--dtype", "bfloat16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())[0]
    assert row["precision"] == "bf16" and row["dense_baseline"].endswith("bf16")  # dense torch runs in bf16 too


@pytest.mark.skipif(not os.path.isdir(HIGHWAY), reason="shared CDnet highway frames not present")
def test_torchvision_model_on_cdnet_analyze_and_run(tmp_path):
    pytest.importorskip("torchvision")
    spec = "torchvision:lraspp_mobilenet_v3_large"
    r = CliRunner().invoke(main, ["analyze", HIGHWAY, "--model", spec, "--limit", "4", "--size", "64x80",
                                  "--thresholds", "8,16", "--out", str(tmp_path / "an")])
    assert r.exit_code == 0, r.output
    assert "random weights" in r.output  # the note says the weights are random, not silently
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert summary["thresholds"]["16"]["median_cone_speedup"] >= 1
    # Note [Dense tails]: the report says how much lies after the first squeeze-excite block, and what to do
    tail = summary["dense_tail"]
    assert tail["after"] == "backbone.4.block.2.avgpool" and 0.5 < tail["share_of_dense_macs"] < 1.0
    assert "backbone.4.block.2.avgpool (a global mean)" in r.output
    assert 'threshold={"global": t}' in (tmp_path / "an" / "report.html").read_text()
    video = tmp_path / "seg.mp4"
    r = CliRunner().invoke(main, ["run", HIGHWAY, "--model", spec, "--limit", "4", "--size", "64x80",
                                  "--compare-dense", "--out", str(video)])
    assert r.exit_code == 0, r.output
    assert _decoded_frames(str(video)) == 4
    records = [json.loads(line) for line in (tmp_path / "seg.jsonl").read_text().splitlines()]
    assert max(rec["max_rel_error"] for rec in records) < 1e-4 and all(rec["argmax_agree"] == 1.0 for rec in records)


def test_run_with_an_openvino_tail(clip, tmp_path, monkeypatch):
    """--tail-engine openvino: a squeeze-excite model's tail on OpenVINO, exact to float rounding; without
    OpenVINO installed the command says what to install instead of a traceback."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    model = tmp_path / "se.py"
    model.write_text(
        "import torch\n"
        "class SE(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.fc, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1), "
        "torch.nn.Conv2d(8, 3, 3, padding=1)\n"
        "    def forward(self, x):\n"
        "        y = torch.relu(self.a(x))\n"
        "        return self.b(y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True))))\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return SE()\n"
    )
    video = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["run", clip, "--model", f"{model}:build", "--tail-engine", "openvino",
                                       "--compare-dense", "--out", str(video)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 8 and max(r["max_rel_error"] for r in records) < 1e-4
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    result = CliRunner().invoke(main, ["run", clip, "--model", f"{model}:build", "--tail-engine", "openvino",
                                       "--out", str(tmp_path / "again.mp4")])
    assert result.exit_code == 2 and "pip install 'fxsparse[openvino]'" in result.output
