"""The ``selfsup`` command: pretrain, embed, eval, list, demo.

Config precedence for ``pretrain``: defaults < ``--config RECIPE`` < flags < ``key=value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def _eval_knn(args: argparse.Namespace) -> int:
    from selfsup.api import evaluate_knn

    results = evaluate_knn(
        args.run,
        args.train,
        args.test,
        k=tuple(args.k) if args.k else None,
        temperature=args.temperature,
        device=args.device,
        out=args.out,
    )
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:6.2f}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from selfsup.augment import VIEW_POLICIES
    from selfsup.config import PROVIDED, ConfigError, recipe_names
    from selfsup.data import SOURCES
    from selfsup.encoders import ENCODERS
    from selfsup.methods import METHODS

    sections = {
        "methods": METHODS,
        "encoders": ENCODERS,
        "sources": SOURCES,
        "views": VIEW_POLICIES,
    }
    everything = ["modalities", "methods", "encoders", "sources", "views", "recipes"]
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
            if args.verbose and what != "sources":
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

    p = commands.add_parser("eval", help="evaluate a pretrained encoder")
    evaluations = p.add_subparsers(dest="evaluation", required=True)
    q = evaluations.add_parser("knn", help="kNN accuracy on frozen features")
    q.add_argument("--run", required=True)
    q.add_argument("--train", required=True, help="labeled source for the memory bank")
    q.add_argument("--test", required=True, help="labeled source to classify")
    q.add_argument("--k", type=int, nargs="+", help="numbers of neighbours (default 20 200)")
    q.add_argument("--temperature", type=float)
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", help="JSON file for the results (default RUN/eval/knn.json)")
    q.set_defaults(handler=_eval_knn)

    p = commands.add_parser(
        "list", help="modalities, registered methods, encoders, data sources, view policies and recipes"
    )
    p.add_argument(
        "what", nargs="*", help="any of: modalities methods encoders sources views recipes (default: all)"
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
