"""The ``fxsparse`` command.

Built on click (subcommands, typed options and help for free) and tqdm
(progress bars); both come with ``pip install 'fxsparse[cli]'``.
"""

from __future__ import annotations

import sys
import warnings

import click

from .errors import FxSparseError


def _size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW, e.g. 480x640") from None
    if h < 8 or w < 8:
        raise click.BadParameter("frames must be at least 8x8")
    return h, w


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.pass_context
def main(ctx, debug):
    """fxsparse: run PyTorch CNNs on fixed-camera video, computing only what changed."""
    ctx.obj = {"debug": debug}


def _precision_options(command):
    """--dtype, --fuse-chains and --tail-engine: transform options a user may want from the command line."""
    engines = click.Choice(["torch", "auto", "openvino", "openvino-bf16"])
    command = click.option("--tail-engine", type=engines, default="torch", show_default=True,
                           help="What runs the layers a global mean makes change everywhere (squeeze-excite, pooled "
                                "branches): auto times torch and openvino (float32) and keeps the faster; openvino "
                                "needs pip install 'fxsparse[openvino]'; openvino-bf16 is not exact.")(command)
    command = click.option("--fuse-chains", is_flag=True,
                           help="Run conv blocks as one unit; no cache for their inner activations (less memory).")(command)
    return click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
                        help="Compute dtype; bfloat16 is fast on CPUs with AMX / AVX512-BF16, not exact.")(command)


def _transform_options(dtype: str, fuse_chains: bool, tail_engine: str = "torch") -> dict:
    import torch

    options = {"fuse_chains": True} if fuse_chains else {}
    if dtype != "float32":
        options["dtype"] = getattr(torch, dtype)
    if tail_engine != "torch":
        options["tail_engine"] = tail_engine
    return options


@main.command()
@click.option("--model", "spec", default="torchvision:resnet18", show_default=True,
              help="torchvision:NAME, path/model.py:factory or builtin:tiny.")
@click.option("--weights", default=None, help="State-dict file for the model (default: random weights).")
@click.option("--size", default="480x640", show_default=True, help="Frame size HxW.")
@click.option("--frames", default=20, show_default=True, help="Frames after the first (which fills the caches).")
@click.option("--changed", default=0.01, show_default=True, help="Share of pixels the moving object changes per frame.")
@click.option("--threads", default=None, type=int, help="torch threads (default: torch's choice).")
@click.option("--out", "out_dir", default="fxsparse-demo", show_default=True, help="Folder for report.md / report.json.")
@click.pass_context
def demo(ctx, spec, weights, size, frames, changed, threads, out_dir):
    """Dense vs sparse on a generated moving-object scene; prints a table and writes a report."""
    import torch
    from tqdm import tqdm

    from .demo import run_demo, summarize, table, write_report
    from .modelspec import load_model

    def work():
        if threads:
            torch.set_num_threads(threads)
        h, w = _size(size)
        if not 0 < changed <= 1:
            raise click.BadParameter("--changed must be in (0, 1]")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load_model(spec, weights)
        for wmsg in caught:
            click.echo(f"note: {wmsg.message}", err=True)
        bar = tqdm(total=frames, desc=f"{spec} {h}x{w}", unit="frame", file=sys.stderr)
        rows = run_demo(model, height=h, width=w, frames=frames, changed=changed,
                        progress=lambda r: (bar.update(1), bar.set_postfix(speedup=f"{r.speedup:.2f}x")))
        bar.close()
        summary = summarize(rows)
        click.echo(table(rows))
        click.echo(
            f"\n{spec} {h}x{w}, {summary['median_changed_fraction']:.2%} of pixels changed: "
            f"dense {summary['median_dense_ms']:.1f} ms, sparse {summary['median_sparse_ms']:.1f} ms "
            f"-> {summary['speedup_of_medians']:.2f}x (cone-ideal {summary['median_cone_speedup']:.2f}x); "
            f"max relative error vs dense {summary['max_rel_error']:.1e}"
        )
        path = write_report(out_dir, spec, (h, w), rows, summary)
        click.echo(f"report: {path}")

    _guarded(ctx, work)


def _thresholds(value: str) -> list[int]:
    try:
        out = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers 0-255") from None
    if not out or any(t < 0 or t > 255 for t in out):
        raise click.BadParameter("thresholds are on the 0-255 pixel scale, e.g. 0,4,8,16")
    return out


def _load(spec, weights):
    """Load a model spec, turning warnings (random weights) into one-line notes."""
    from .modelspec import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(spec, weights)
    for wmsg in caught:
        click.echo(f"note: {wmsg.message}", err=True)
    return model


@main.command()
@click.argument("source")
@click.option("--model", "spec", default=None, help="Also estimate the cone-ideal speedup of this model.")
@click.option("--weights", default=None, help="State-dict file for the model.")
@click.option("--thresholds", default="0,4,8,16", show_default=True, help="Input thresholds, 0-255 scale.")
@click.option("--clean-up", is_flag=True,
              help="Thresholds above 0 with the change mask's clean-up (as fxsparse run --clean-up).")
@click.option("--size", default=None, help="Resize frames to HxW.")
@click.option("--limit", default=None, type=int, help="Analyse at most this many frames.")
@click.option("--fps", default=None, type=float, help="Frame rate for savings (default: the source's, else 25).")
@click.option("--out", "out_dir", default="fxsparse-analysis", show_default=True, help="Output folder.")
@click.pass_context
def analyze(ctx, source, spec, weights, thresholds, clean_up, size, limit, fps, out_dir):
    """How much of SOURCE (video file, image folder, camera index, URL) changes, and what it saves."""
    from tqdm import tqdm

    from .analyze import analyze_frames, write_analysis
    from .video import check_source, read_frames, source_fps

    def work():
        check_source(source)
        levels = _thresholds(thresholds)
        model = _load(spec, weights) if spec else None
        rate = fps or source_fps(source)
        bar = tqdm(total=limit, desc="analyze", unit="frame", file=sys.stderr)
        result = analyze_frames(read_frames(source, size=_size(size) if size else None, limit=limit), levels,
                                model=model, model_name=spec, fps=rate, progress=lambda i: bar.update(1),
                                clean_up=clean_up)
        bar.close()
        path = write_analysis(result, out_dir, source)
        for t, row in result.summary()["thresholds"].items():
            cleaned = " + clean-up" if clean_up and int(t) > 0 else ""
            line = f"threshold {t:>3}{cleaned}: median {row['median_changed']:.2%} of pixels changed"
            if "median_cone_speedup" in row:
                line += f", cone-ideal {row['median_cone_speedup']:.2f}x"
            click.echo(line)
        if result.dense_tail:  # Note [Dense tails]: why the cone-ideal stays low for squeeze-excite models
            click.echo(f"{result.dense_tail['share_of_dense_macs']:.0%} of the model's work lies after "
                       f"{result.dense_tail['after']} (a global mean): in exact mode it is recomputed on every "
                       "changed frame (run --tail-engine auto puts it on the faster of torch and OpenVINO); layer "
                       "thresholds on pooled vectors (threshold={'global': t}) keep it sparse")
        click.echo(f"report: {path}")

    _guarded(ctx, work)


@main.command()
@click.argument("source")
@click.option("--model", "spec", required=True, help="torchvision:NAME, path/model.py:factory or builtin:tiny.")
@click.option("--weights", default=None, help="State-dict file for the model.")
@click.option("--mode", type=click.Choice(["exact", "threshold", "patch"]), default="exact", show_default=True)
@click.option("--threshold", default=8.0, show_default=True, help="Input threshold (0-255) for threshold/patch modes.")
@click.option("--clean-up", is_flag=True,
              help="Threshold mode: clean the change mask (opening 1 px, blobs under 30 px dropped, dilation 2 px).")
@click.option("--size", default=None, help="Resize frames to HxW.")
@click.option("--limit", default=None, type=int, help="Process at most this many frames.")
@click.option("--out", "out_video", default="fxsparse-run.mp4", show_default=True, help="Output video (.mp4/.avi).")
@click.option("--json", "json_path", default=None, help="Per-frame JSON Lines (default: next to the video).")
@click.option("--compare-dense", is_flag=True, help="Also run the dense model: agreement, speedup, savings.")
@click.option("--fps", default=None, type=float, help="Frame rate (default: the source's, else 25).")
@click.option("--watts-per-core", default=10.0, show_default=True, help="For the energy estimate without RAPL.")
@_precision_options
@click.pass_context
def run(ctx, source, spec, weights, mode, threshold, clean_up, size, limit, out_video, json_path, compare_dense, fps,
        watts_per_core, dtype, fuse_chains, tail_engine):
    """Run a model over SOURCE sparsely; write an overlay video, per-frame JSON and a summary."""
    import json as _json
    import os

    from tqdm import tqdm

    from .run import run_frames
    from .video import check_source, read_frames, source_fps
    from .videowriter import VideoWriter

    def work():
        if clean_up and mode != "threshold":
            raise click.BadParameter("--clean-up cleans the change mask of --mode threshold; exact mode recomputes "
                                     "every change. Hint: add --mode threshold --threshold 16.")
        check_source(source)  # before any output file exists
        model = _load(spec, weights)
        rate = fps or source_fps(source) or 25.0
        frames = read_frames(source, size=_size(size) if size else None, limit=limit)
        jpath = json_path or os.path.splitext(out_video)[0] + ".jsonl"
        bar = tqdm(total=limit, desc=f"{mode}", unit="frame", file=sys.stderr)

        def live(rec):
            bar.update(1)
            post = {"changed": f"{rec['changed_fraction']:.1%}", "ms": f"{rec['sparse_ms']:.0f}"}
            if "dense_ms" in rec:
                post["speedup"] = f"{rec['dense_ms'] / max(rec['sparse_ms'], 1e-6):.2f}x"
            bar.set_postfix(post)

        with VideoWriter(out_video, fps=rate) as writer, open(jpath, "w") as jsonl:
            summary = run_frames(frames, model, mode=mode, threshold=threshold, compare_dense=compare_dense,
                                 writer=writer, jsonl=jsonl, fps=rate, watts_per_core=watts_per_core, on_frame=live,
                                 transform_options=_transform_options(dtype, fuse_chains, tail_engine), clean_up=clean_up)
        bar.close()
        result = summary.as_dict()
        with open(os.path.splitext(out_video)[0] + ".summary.json", "w") as f:
            _json.dump(result, f, indent=1)
        click.echo(_json.dumps(result, indent=1))
        click.echo(f"video: {out_video} ({summary.frames} frames); per-frame JSON: {jpath}")
        if summary.frames > 1 and summary.dense_frames * 2 > summary.frames - 1:
            click.echo(
                f"note: {summary.dense_frames} of {summary.frames - 1} frames changed in most pixels and ran as one "
                "dense pass (any speedup there comes from the fused graph, not from skipping work). "
                "Hint: camera noise? try --mode threshold --clean-up (see docs/thresholds.md).",
                err=True,
            )
        if summary.interrupted:
            click.echo(f"interrupted after {summary.frames} frames; the outputs are complete up to there.", err=True)
            ctx.exit(130)

    _guarded(ctx, work)


@main.command()
@click.option("--model", "spec", required=True, help="torchvision:NAME, path/model.py:factory or builtin:tiny.")
@click.option("--weights", default=None, help="State-dict file for the model.")
@click.option("--size", default="576x768", show_default=True, help="Frame size HxW.")
@click.option("--fractions", default="0.01,0.05,0.2", show_default=True, help="Changed share per frame.")
@click.option("--frames", default=8, show_default=True, help="Frames per scene after the first.")
@click.option("--out", "out_path", default=None, help="Write the rows as JSON here.")
@_precision_options
@click.pass_context
def bench(ctx, spec, weights, size, fractions, frames, out_path, dtype, fuse_chains, tail_engine):
    """Sparse vs the fastest dense eager setup on synthetic moving-object scenes (same process)."""
    import json as _json

    from .bench import bench_scene, markdown_table, synthetic_frames

    def work():
        h, w = _size(size)
        model = _load(spec, weights)
        rows = []
        for frac in (float(f) for f in fractions.split(",")):
            if not 0 < frac <= 1:
                raise click.BadParameter("--fractions must lie in (0, 1]")
            rows.append(bench_scene(model, spec, synthetic_frames(h, w, frac, frames + 1), f"synthetic {frac:.0%}",
                                    **_transform_options(dtype, fuse_chains, tail_engine)))
            click.echo(markdown_table(rows[-1:]).splitlines()[-1])
        click.echo(markdown_table(rows))
        if out_path:
            with open(out_path, "w") as f:
                _json.dump([r.as_dict() for r in rows], f, indent=1)

    _guarded(ctx, work)


def _guarded(ctx, work):
    """One-line errors (with the fix) and a non-zero exit; full traceback only with --debug."""
    try:
        work()
    except (FxSparseError, click.BadParameter, OSError, ValueError, ImportError) as e:  # ImportError: an extra is missing
        if ctx.obj.get("debug"):
            raise
        click.echo(f"error: {e}", err=True)
        ctx.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(130)


if __name__ == "__main__":
    main()
