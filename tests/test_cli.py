"""The fxsparse command: demo on a small built-in model, and one-line errors."""

import json
import os

from click.testing import CliRunner

from fxsparse.cli import main


def test_demo_writes_report_and_is_exact(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main, ["demo", "--model", "builtin:tiny", "--size", "64x80", "--frames", "4", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "cone-ideal" in result.output and "report:" in result.output
    data = json.loads((out / "report.json").read_text())
    assert len(data["frames"]) == 4
    assert data["summary"]["max_rel_error"] < 1e-4  # exact mode: equals the dense model
    assert all(0 < f["changed_fraction"] < 0.2 for f in data["frames"])
    assert "| frame |" in (out / "report.md").read_text()


def test_unknown_model_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--model", "nope:thing", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: cannot read model spec 'nope:thing'" in result.output
    assert "Traceback" not in result.output


def test_bad_size_and_weights(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--model", "builtin:tiny", "--size", "big", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "HxW" in result.output
    weights = tmp_path / "w.pt"
    import torch

    torch.save({"not": torch.zeros(1)}, weights)
    result = CliRunner().invoke(
        main, ["demo", "--model", "builtin:tiny", "--weights", str(weights), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "do not fit the model" in result.output


def test_user_model_file(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())\n"
    )
    result = CliRunner().invoke(
        main, ["demo", "--model", f"{path}:build", "--size", "32x32", "--frames", "2", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert os.path.exists(tmp_path / "r" / "report.md")
