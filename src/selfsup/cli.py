"""The ``selfsup`` command: pretrain, embed, eval, report, export, bench, list, demo.

Config precedence for ``pretrain``: defaults < ``--config RECIPE`` < flags < ``key=value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from selfsup.errors import SelfsupError


def _pretrain(args: argparse.Namespace) -> int:
    from selfsup.api import pretrain

    result = pretrain(
        data=args.data,
        method=args.method,
        encoder=args.encoder,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        config=args.config,
        overrides=args.overrides,
        strict=True if args.strict else None,
    )
    return 0 if result.finished or result.step > 0 else 1


def _embed(args: argparse.Namespace) -> int:
    from selfsup.api import embed

    result = embed(args.run, args.data, out=args.out, device=args.device)
    n, d = result.embeddings.shape
    print(f"wrote {n} embeddings of dimension {d} to {args.out}")
    return 0


def _print_metrics(metrics: dict[str, object], title: str | None = None) -> None:
    if title:
        print(title)
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        shown = f"{value:8.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


def _eval_knn(args: argparse.Namespace) -> int:
    from selfsup.eval.protocols import evaluate_knn

    results = evaluate_knn(
        args.run,
        args.train,
        args.test,
        k=tuple(args.k) if args.k else None,
        temperature=args.temperature,
        device=args.device,
        out=args.out,
    )
    _print_metrics(results, "kNN accuracy (%)")
    return 0


def _eval_linear(args: argparse.Namespace) -> int:
    from selfsup.eval.protocols import evaluate_linear

    results = evaluate_linear(
        args.run,
        args.train,
        args.test,
        layers=args.layers,
        poolings=tuple(args.pooling),
        baselines=args.baselines,
        train_targets=args.train_targets,
        test_targets=args.test_targets,
        seed=args.seed,
        device=args.device,
        out=args.out,
    )
    _print_metrics(results, "linear probe on the test set (grid selected on a validation split of --train)")
    return 0


def _eval_fewshot(args: argparse.Namespace) -> int:
    from selfsup.eval.protocols import evaluate_fewshot

    table = evaluate_fewshot(
        args.run,
        args.train,
        args.test,
        per_class=tuple(args.per_class) if args.per_class else None,
        fractions=tuple(args.fractions) if args.fractions else None,
        seeds=args.seeds,
        baselines=not args.no_baselines,
        device=args.device,
        out=args.out,
    )
    print(table)
    return 0


def _eval_finetune(args: argparse.Namespace) -> int:
    from selfsup.eval.finetune import finetune

    options = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    results = finetune(
        args.run,
        args.train,
        args.test,
        out=args.out,
        label_fraction=args.fraction,
        labels_per_class=args.per_class,
        seed=args.seed,
        resume=args.resume,
        overrides=args.overrides,
        **options,
    )
    _print_metrics(results, "fine-tuned encoder on the test set (best validation checkpoint)")
    return 0


def _eval_layer(args: argparse.Namespace) -> int:
    from selfsup.eval.protocols import evaluate_layer

    results = evaluate_layer(
        args.run,
        args.train,
        args.test,
        level=args.level,
        baselines=args.baselines,
        device=args.device,
        out=args.out,
    )
    _print_metrics(results, "weighted-layer probe on the test set")
    return 0


def _eval_cluster(args: argparse.Namespace) -> int:
    from selfsup.eval.protocols import evaluate_cluster

    results = evaluate_cluster(args.run, args.data, k=args.k, device=args.device, out=args.out)
    _print_metrics(results, "k-means clustering of the features")
    return 0


def _eval_rankme(args: argparse.Namespace) -> int:
    from selfsup.eval.selection import evaluate_label_free

    result = evaluate_label_free(
        args.run,
        args.data,
        checkpoints=args.checkpoints,
        train=args.train,
        test=args.test,
        device=args.device,
        out=args.out,
    )
    print(result["table"])
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfsup.eval.protocols import write_embedding_map
    from selfsup.report import write_report

    for run in args.runs:
        missing = not (Path(run) / "eval" / "embedding_map.json").exists()
        if not args.no_map and (missing or args.data) and (Path(run) / "config.yaml").exists():
            try:
                write_embedding_map(run, args.data, device=args.device)
            except (SelfsupError, OSError) as error:  # the report still shows everything else
                print(f"selfsup report: no embedding map for {run}: {error}", file=sys.stderr)
    paths = write_report(args.runs, out=args.out)
    for note in paths.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(f"wrote {paths.md} and {paths.html}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from selfsup.export import export_run

    options: dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    if args.verify_data:
        options["data"] = args.verify_data
    if args.no_hidden:
        options["hidden"] = False
    if args.hf_model:
        options["hf_model"] = args.hf_model
    path = export_run(args.run, args.format, args.out, device=args.device, **options)
    print(f"exported {args.run} as {args.format} to {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from selfsup.benchmark import run_benchmark

    result = run_benchmark(
        data=args.data,
        test=args.test,
        methods=args.methods,
        encoders=args.encoders,
        budget_s=args.budget,
        steps=args.steps,
        out=args.out,
        device=args.device,
        overrides=args.overrides,
    )
    print(result.table)
    return 0


def _list(args: argparse.Namespace) -> int:
    from selfsup.augment import VIEW_POLICIES
    from selfsup.config import PROVIDED, ConfigError, recipe_names
    from selfsup.data import SOURCES
    from selfsup.encoders import ENCODERS
    from selfsup.eval import PROBES
    from selfsup.export import EXPORTERS
    from selfsup.methods import METHODS

    sections = {
        "methods": METHODS,
        "encoders": ENCODERS,
        "sources": SOURCES,
        "views": VIEW_POLICIES,
        "probes": PROBES,
        "exports": EXPORTERS,
    }
    everything = ["modalities", "methods", "encoders", "sources", "views", "probes", "exports", "recipes"]
    wanted = args.what or everything
    for what in wanted:
        if what not in everything:
            raise ConfigError(f"cannot list {what!r}; choose from {', '.join(everything)}")
    supplied = {name for names in PROVIDED.values() for name in names}  # by the builder, not the user
    for what in wanted:
        print(f"{what}:")
        if what == "recipes":
            for name in recipe_names():
                print(f"  {name}")
            continue
        if what == "modalities":
            from selfsup.modalities import MODALITIES

            for name, modality in sorted(MODALITIES.items()):
                print(
                    f"  {name:<18} default encoder {modality.default_encoder}, "
                    f"default method {modality.default_method}"
                )
            continue
        registry = sections[what]
        for name in registry.names():
            summary = registry.summary(name)
            modality = registry.metadata(name).get("modality")
            tag = f"[{modality}] " if modality else ""
            print(f"  {name:<18} {tag}{summary}" if summary or tag else f"  {name}")
            if args.verbose and what not in ("sources", "exports"):
                for option, parameter in registry.parameters(name).items():
                    if option in supplied:
                        continue
                    default = "" if parameter.default is parameter.empty else f" = {parameter.default!r}"
                    print(f"      {option}{default}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from selfsup.demo import run_demo

    run_demo(out=args.out, steps=args.steps, device=args.device, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__.splitlines()[0])
    from selfsup import __version__

    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pretrain", help="pretrain an encoder with a self-supervised method")
    p.add_argument(
        "--data", help="data source: folder, tar shards (path/list/glob), CIFAR pickle dir, .npy/.npz, digits"
    )
    p.add_argument("--method", help="method name (see `selfsup list methods`; default: the modality's)")
    p.add_argument("--encoder", help="encoder name (see `selfsup list encoders`; default: the modality's)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, help="optimizer steps (0: save the randomly initialised encoder)")
    p.add_argument("--batch-size", type=int, help="global batch size per optimizer step")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument("--config", help="YAML recipe: a path or a packaged name (see `selfsup list recipes`)")
    p.add_argument(
        "--strict", action="store_true", help="fail on the first unreadable input instead of skipping it"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. optim.lr=0.1")
    p.set_defaults(handler=_pretrain)

    p = commands.add_parser("embed", help="write embeddings of a data source to an .npz file")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output .npz (embeddings, labels, ids)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_embed)

    _add_eval_commands(commands)
    _add_output_commands(commands)
    _add_speech_commands(commands)
    p = commands.add_parser(
        "list", help="modalities, registered methods, encoders, data sources, view policies and recipes"
    )
    p.add_argument(
        "what",
        nargs="*",
        help="any of: modalities methods encoders sources views probes exports recipes (default: all)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show each component's options")
    p.set_defaults(handler=_list)

    p = commands.add_parser("demo", help="SimCLR on the bundled digits in about two minutes on a CPU")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides on top of the demo recipe"
    )
    p.set_defaults(handler=_demo)
    return parser


def _add_eval_commands(commands: Any) -> None:
    """``selfsup eval PROTOCOL``: one sub-command per protocol."""
    p = commands.add_parser("eval", help="evaluate a pretrained encoder")
    evaluations = p.add_subparsers(dest="evaluation", required=True)

    def evaluation(name: str, help: str, handler: Any, *, paired: bool = True) -> argparse.ArgumentParser:
        q = evaluations.add_parser(name, help=help)
        q.add_argument("--run", required=True, help="run directory")
        if paired:
            q.add_argument("--train", required=True, help="labelled source the probe is fitted on")
            q.add_argument("--test", required=True, help="labelled source it is scored on")
        q.add_argument("--device", default="cpu")
        q.add_argument("--out", help=f"JSON file for the results (default RUN/eval/{name}.json)")
        q.set_defaults(handler=handler)
        return q

    q = evaluation("knn", "weighted kNN accuracy on frozen features", _eval_knn)
    q.add_argument("--k", type=int, nargs="+", help="numbers of neighbours (default 20 200)")
    q.add_argument("--temperature", type=float)
    q = evaluation("linear", "linear probe: a grid of lr x weight decay (x layers x pooling)", _eval_linear)
    q.add_argument(
        "--layers", type=int, nargs="+", help="hidden states to probe (default: the pooled output)"
    )
    q.add_argument("--pooling", nargs="+", default=["mean"], choices=["mean", "max"])
    q.add_argument("--baselines", action="store_true", help="also probe a random-init encoder and raw inputs")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation split and the heads")
    q.add_argument("--train-targets", help="regression: a .npy of float targets, one row per --train sample")
    q.add_argument("--test-targets", help="regression: a .npy of float targets, one row per --test sample")
    q = evaluation(
        "fewshot", "linear probes on N labels per class or a fraction, over several draws", _eval_fewshot
    )
    q.add_argument("--per-class", type=int, nargs="+", help="labels per class (default 1 5 10)")
    q.add_argument("--fractions", type=float, nargs="+", help="label fractions instead, e.g. 0.01 0.1 1")
    q.add_argument("--seeds", type=int, default=5, help="label draws per setting")
    q.add_argument("--no-baselines", action="store_true", help="skip the random-init and raw-input rows")
    q = evaluations.add_parser("finetune", help="fine-tune the whole encoder on a label fraction")
    q.add_argument("--run", help="pretrained run directory (omit: train from random initialisation)")
    q.add_argument("--train", required=True)
    q.add_argument("--test", required=True)
    q.add_argument("--out", required=True, help="run directory of the fine-tuning run")
    q.add_argument("--fraction", type=float, help="fraction of the labels to train on")
    q.add_argument("--per-class", type=int, help="labels per class to train on")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--steps", type=int, help="optimizer steps (default 300; early stopping may end sooner)")
    q.add_argument("--batch-size", type=int, help="default 64; at most the labelled samples drawn")
    q.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    q.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides of the fine-tuning run"
    )
    q.set_defaults(handler=_eval_finetune)
    q = evaluation("layer", "SUPERB-style weighted-layer probe over every hidden state", _eval_layer)
    q.add_argument("--level", choices=["utterance", "frame"], default="utterance")
    q.add_argument(
        "--baselines",
        action="store_true",
        help="also probe a random-init encoder and the input baselines (log-mel, MFCC for audio)",
    )
    from selfsup.eval.verification import add_verification_command

    add_verification_command(evaluations)
    q = evaluation(
        "cluster", "k-means on the features: NMI, ARI, Hungarian accuracy", _eval_cluster, paired=False
    )
    q.add_argument("--data", required=True, help="labelled source to cluster")
    q.add_argument("--k", type=int, help="clusters (default: the number of classes)")
    q = evaluation(
        "rankme",
        "label-free scores (RankMe, alpha-ReQ, LiDAR, alignment/uniformity)",
        _eval_rankme,
        paired=False,
    )
    q.add_argument("--data", required=True, help="source to score (labels not needed)")
    q.add_argument(
        "--checkpoints", choices=["last", "all"], default="last", help="score every kept checkpoint"
    )
    q.add_argument("--train", help="with --test: also kNN per checkpoint, and the rank correlation")
    q.add_argument("--test")


def _add_output_commands(commands: Any) -> None:
    """``selfsup report``, ``export`` and ``bench``."""
    p = commands.add_parser("report", help="report.md and a self-contained report.html of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for a multi-run report (one run: the run directory)")
    p.add_argument("--data", help="source of the embedding map (default: the run's validation/training data)")
    p.add_argument("--no-map", action="store_true", help="do not compute the 2-D embedding map")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_report)

    p = commands.add_parser("export", help="export the encoder: safetensors, timm, onnx, hf")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, help="safetensors, timm, onnx or hf")
    p.add_argument("--out", help="output folder (default RUN/export/FORMAT)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--opset", type=int, help="onnx: the opset version (default 17)")
    p.add_argument("--verify-data", help="onnx: check ONNX Runtime against PyTorch on samples of this source")
    p.add_argument("--no-hidden", action="store_true", help="onnx: output only the pooled embedding")
    p.add_argument(
        "--hf-model", choices=["wav2vec2", "hubert"], help="hf: transformers model type (default wav2vec2)"
    )
    p.set_defaults(handler=_export)

    p = commands.add_parser("bench", help="pretrain then probe methods x encoders within a time budget")
    p.add_argument(
        "--data", required=True, nargs="+", help="labelled training sources (pretraining ignores labels)"
    )
    p.add_argument("--test", required=True, nargs="+", help="one labelled test source per --data")
    p.add_argument("--methods", nargs="+", default=["simclr"])
    p.add_argument("--encoders", nargs="+", help="default: the data's modality's")
    p.add_argument("--budget", type=float, help="seconds of pretraining per run (stops early, then probes)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default from the config)")
    p.add_argument("--out", default="runs/bench", help="folder of the runs and of results.md / results.csv")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    p.set_defaults(handler=_bench)


def _add_speech_commands(commands: Any) -> None:
    """``selfsup hubert`` (the HuBERT iterations end to end), ``tokenize`` (discrete units) and
    ``import-hf`` (a transformers speech checkpoint as a run)."""
    from selfsup.hubert_pipeline import add_hubert_command
    from selfsup.units import add_tokenize_command

    add_hubert_command(commands)
    add_tokenize_command(commands)
    from selfsup.interop.run_import import add_import_command

    add_import_command(commands)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    # key=value overrides may stand anywhere, also after options (argparse would stop at `--steps 3`).
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.handler(args)
    except (SelfsupError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as error:
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # a diverged run: the message says what to change
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
