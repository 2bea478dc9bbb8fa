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


def _guarded(ctx, work):
    """One-line errors (with the fix) and a non-zero exit; full traceback only with --debug."""
    try:
        work()
    except (FxSparseError, click.BadParameter, OSError) as e:
        if ctx.obj.get("debug"):
            raise
        click.echo(f"error: {e}", err=True)
        ctx.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        ctx.exit(130)


if __name__ == "__main__":
    main()
