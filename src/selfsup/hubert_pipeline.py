"""HuBERT's iterations end to end: ``selfsup hubert`` / :func:`run_hubert`.

HuBERT (Hsu et al. 2021) alternates clustering and masked prediction. fairseq spreads it over scripts
(``examples/hubert/simple_kmeans``: dump features, learn k-means, dump labels per split; then
``hubert_pretraining`` per iteration); here one call runs it and keeps everything::

    OUT/iter0/          run directory of iteration 0 (checkpoints, encoder.safetensors, report)
    OUT/iter0/units/    its targets: k-means on 39-dim MFCCs of the training split, labels of every split
    OUT/iter1/          iteration 1, trained from scratch (as the paper) on ...
    OUT/iter1/units/    ... k-means on layer L of OUT/iter0's encoder, labels of every split
    OUT/units/          a codebook on layer L of the last iteration (GSLM's tokenizer: selfsup tokenize)
    OUT/summary.json, OUT/summary.md

Iteration ``n``: features of the training split (MFCCs at the encoder's frame rate for ``n = 0``, else
``hidden_states[layer]`` of iteration ``n - 1``'s encoder) → k-means with ``clusters[n]`` centres on a seeded
subset (:class:`~selfsup.units.KMeansOptions`) → labels of the training split and of every ``label_splits``
source → masked-prediction pretraining (method ``hubert`` with ``method.targets=OUT/iter{n}/units``).
Resumable: units already built are reused, a finished iteration (its ``encoder.safetensors``) is not
redone, and an unfinished one continues from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError
from selfsup.io import write_text_atomic
from selfsup.units import KMeansOptions, Units, build_units, split_name


@dataclass
class PipelineResult:
    """``rows``: one summary row per iteration (plus the final codebook); ``table``: them as markdown."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""


def _iteration_config(
    data: str, steps: int | None, overrides: Sequence[str], units_dir: Path, k: int, recipe: str | None
) -> Any:
    from selfsup.api import make_config

    extra = [*overrides, f"method.targets={units_dir}", f"method.num_clusters={k}"]
    return make_config(recipe, data=data, method="hubert", steps=steps, overrides=extra)


def _check_finished_matches(run_dir: Path, config: Any) -> None:
    """A finished iteration is reused only if it was trained as asked (else a clear error, never a mix)."""
    from selfsup.config import load_config

    saved = load_config(run_dir / "config.yaml")
    asked = {
        "data.source": config.data.source,
        "train.steps": config.train.steps,
        "method.params": config.method.params,
    }
    found = {
        "data.source": saved.data.source,
        "train.steps": saved.train.steps,
        "method.params": saved.method.params,
    }
    changed = [f"{k}: {found[k]!r} -> {v!r}" for k, v in asked.items() if found[k] != v]
    if changed:
        raise ConfigError(
            f"{run_dir} is a finished iteration trained with other settings ({'; '.join(changed)}); "
            "choose another --out or delete that iteration"
        )


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if "masked_accuracy" in row:
                last = row
    return last


def _row(iteration: int | str, features: str, units: Units, run_dir: Path | None) -> dict[str, Any]:
    fit = units.meta.get("fit", {})
    row: dict[str, Any] = {
        "iteration": iteration,
        "features": features,
        "clusters": units.num_clusters,
        "frames_fitted": fit.get("frames_seen"),
        "inertia_per_frame": fit.get("inertia_per_frame"),
        "splits": ", ".join(units.splits),
    }
    if run_dir is not None:
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        metrics = _last_metrics(run_dir)
        row.update(
            steps=summary.get("steps"),
            final_loss=summary.get("final_loss"),
            masked_accuracy=metrics.get("masked_accuracy"),
            train_seconds=summary.get("wall_seconds"),
        )
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k != "splits"] if rows else []

    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(shown(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def run_hubert(
    data: str,
    out: str | Path,
    *,
    iterations: int = 2,
    layer: int = 6,
    clusters: Sequence[int] = (100, 500),
    steps: int | None = None,
    label_splits: Sequence[str] = (),
    overrides: Sequence[str] = (),
    recipe: str | None = None,
    kmeans_fraction: float = 0.1,
    kmeans_max_frames: int = 200_000,
    kmeans_n_init: int = 3,
    kmeans_seed: int = 0,
    final_units: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
) -> PipelineResult:
    """Run HuBERT's ``iterations`` on the training source ``data`` into ``out`` (see the module docstring).

    ``clusters``: k per iteration (one value: the same for all; HuBERT Base uses 100 on MFCCs, then 500 on
    layer 6 of iteration 1); ``layer``: the hidden state clustered for iterations ``n > 0`` (and the final
    codebook); ``steps``: optimizer steps per iteration; ``label_splits``: further sources labelled with each
    iteration's codebook; ``overrides``: ``key=value`` config overrides of every iteration's run (encoder,
    batch size, masking, ...) on top of ``recipe`` (a YAML recipe: path or packaged name); the k-means
    options as :class:`~selfsup.units.KMeansOptions`; ``device``: where
    features and k-means are computed (training uses ``train.device``). Returns the summary rows and table,
    also written to ``out/summary.json`` and ``out/summary.md``.
    """
    from selfsup.api import load
    from selfsup.build import build_encoder, fit_transform, load_data, resolve_components
    from selfsup.train.loop import pretrain_run

    if iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {iterations}")
    ks = list(clusters)
    if len(ks) == 1:
        ks = ks * iterations
    if len(ks) != iterations:
        raise ConfigError(
            f"--clusters gives {len(ks)} values for {iterations} iterations: give one, or one each"
        )
    out = Path(out)
    rows: list[dict[str, Any]] = []
    previous: Path | None = None
    for n, k in enumerate(ks):
        run_dir = out / f"iter{n}"
        units_dir = run_dir / "units"
        config = _iteration_config(data, steps, overrides, units_dir, k, recipe)
        options = KMeansOptions(
            num_clusters=k,
            fraction=kmeans_fraction,
            max_frames=kmeans_max_frames,
            n_init=kmeans_n_init,
            seed=kmeans_seed,
        )
        finished = (run_dir / "encoder.safetensors").is_file() and (run_dir / "summary.json").is_file()
        if finished:
            _check_finished_matches(run_dir, config)
        dataset = load_data(config)
        resolved = resolve_components(config, dataset.info)
        splits = {split_name(spec): load_data(config, spec) for spec in label_splits}
        if previous is None:
            source: Any = "mfcc"
            transform = fit_transform(resolved, dataset)
            frame_rate = build_encoder(resolved, dataset.info).frame_rate
            features = "mfcc"
        else:
            model = load(previous, device=device)
            source, transform, frame_rate = (model.encoder, layer), model.transform, model.encoder.frame_rate
            features = f"{previous.name} layer {layer}"
        if frame_rate is None:
            raise ConfigError(
                f"encoder {resolved.encoder.name!r} declares no frame_rate; HuBERT needs audio frames"
            )
        started = time.perf_counter()
        units = build_units(
            source,
            dataset,
            transform,
            frame_rate=frame_rate,
            options=options,
            splits=splits,
            directory=units_dir,
            run=previous,
            batch_size=batch_size,
            device=device,
        )
        units_seconds = time.perf_counter() - started
        if not finished:
            pretrain_run(config, run_dir, resume=True)
        row = _row(n, features, units, run_dir)
        row["units_seconds"] = round(units_seconds, 1)
        rows.append(row)
        previous = run_dir
    if final_units and previous is not None:
        # The tokenizer of the final model: k-means on its layer (GSLM: HuBERT layer 6, 100 units).
        model = load(previous, device=device)
        dataset = model.load_data(data)
        final = build_units(
            (model.encoder, layer),
            dataset,
            model.transform,
            frame_rate=model.encoder.frame_rate or 0.0,
            options=KMeansOptions(
                num_clusters=ks[-1],
                fraction=kmeans_fraction,
                max_frames=kmeans_max_frames,
                n_init=kmeans_n_init,
                seed=kmeans_seed,
            ),
            directory=out / "units",
            run=previous,
            batch_size=batch_size,
            device=device,
        )
        rows.append(_row("final", f"{previous.name} layer {layer}", final, None))
    table = _table(rows)
    write_text_atomic(out / "summary.json", json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out / "summary.md", "# HuBERT iterations\n\n" + table + "\n")
    return PipelineResult(out=out, rows=rows, table=table)


def add_hubert_command(commands: Any) -> argparse.ArgumentParser:
    """``selfsup hubert``: add the sub-command to ``commands`` (an argparse sub-parsers object)."""
    p = commands.add_parser(
        "hubert", help="HuBERT end to end: k-means targets -> masked prediction, for every iteration"
    )
    p.add_argument("--data", required=True, help="training audio (the k-means is fitted on it)")
    p.add_argument("--out", required=True, help="folder of every iteration's run, codebook and labels")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--layer", type=int, default=6, help="hidden state clustered for iterations > 0")
    p.add_argument(
        "--clusters", type=int, nargs="+", default=[100, 500], help="k per iteration (or one for all)"
    )
    p.add_argument("--steps", type=int, help="optimizer steps per iteration (default from the config)")
    p.add_argument("--config", help="YAML recipe of every iteration's run (e.g. hubert_speech_cpu)")
    p.add_argument(
        "--label-splits",
        nargs="+",
        action="extend",
        default=[],
        metavar="SPEC",
        help="other sources to label with each codebook (put key=value overrides before this option)",
    )
    p.add_argument(
        "--kmeans-fraction", type=float, default=0.1, help="fraction of the training clips k-means sees"
    )
    p.add_argument("--kmeans-max-frames", type=int, default=200_000, help="cap on the frames k-means sees")
    p.add_argument("--kmeans-n-init", type=int, default=3, help="k-means restarts")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means subset and initialisation")
    p.add_argument(
        "--no-final-units", action="store_true", help="skip the codebook on the last model's layer"
    )
    p.add_argument(
        "--device", default="cpu", help="device of the features and k-means (training: train.device)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides of every iteration")
    p.set_defaults(handler=hubert_command)
    return p


def hubert_command(args: argparse.Namespace) -> int:
    """Handler of ``selfsup hubert``."""
    result = run_hubert(
        args.data,
        args.out,
        iterations=args.iterations,
        layer=args.layer,
        clusters=args.clusters,
        steps=args.steps,
        label_splits=args.label_splits,
        overrides=args.overrides,
        recipe=args.config,
        kmeans_fraction=args.kmeans_fraction,
        kmeans_max_frames=args.kmeans_max_frames,
        kmeans_n_init=args.kmeans_n_init,
        kmeans_seed=args.seed,
        final_units=not args.no_final_units,
        device=args.device,
    )
    print(result.table)
    print(f"wrote {result.out / 'summary.md'}")
    return 0


__all__ = ["PipelineResult", "add_hubert_command", "hubert_command", "run_hubert"]
