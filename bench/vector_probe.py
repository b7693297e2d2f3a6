"""Linear (and kNN) probes of SimCLR / mlp encoders pretrained on a table's numeric columns.

Reads a Parquet table (default: the UCI HIGGS sample in ``../shared/data/tabular/higgs.parquet``,
28 float64 features and a ``label`` column) with pyarrow, writes float32 ``.npz`` files (features,
labels, columns) for one fixed stratified split — test 20%, then validation 20% of the rest, used
only to choose settings — and, for every seed:

1. pretrains on the training rows with ``selfsup.pretrain`` (the labels are in the file, but the
   SSL objective never uses them; the run's kNN monitor only reports with them);
2. pretrains the same configuration for 0 steps (the randomly initialised encoder, same seed);
3. extracts train/val/test features of both encoders, and the standardized raw inputs
   (``raw_input_features`` with the run's fitted standardization);
4. fits scikit-learn ``LogisticRegression`` on standardized features for every label budget
   (all training labels, and ``--label-budgets`` rows sampled stratified with the seed), choosing
   C from ``--c-grid`` by validation accuracy, then (``--split test``) refitting on the training
   rows and scoring the test rows: accuracy and ROC AUC;
5. scores the library's cosine kNN (``selfsup.eval.knn.knn_accuracy``, k = 20 and 200) with all
   training labels.

``--split val`` is the sweep mode: nothing touches the test rows; the score is the validation score
at the best C of the grid (the same optimism for every row of a sweep).

Prints a table (mean ± std over seeds) and writes every number (per seed, per C, per label
budget, with the command and the split) to ``WORK/results-TAG-SPLIT.json`` (or ``--json``). Each
setting's runs go to ``WORK/runs/TAG-seedN`` (``--overwrite`` replaces them).

    python bench/vector_probe.py --work /tmp/vp/defaults --seeds 0 1 2 --steps 1000
    python bench/vector_probe.py --work /tmp/vp/sweep --split val --seeds 0 --steps 500 \\
        --temperature 0.1 --optimizer adamw --lr 1e-3 --tag t0.1-adamw
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tabular" / "higgs.parquet"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2  # of the rows left after the test split
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


# ---------------------------------------------------------------------------------------------- data
def write_split(data: Path, label: str, work: Path) -> dict[str, Any]:
    """The numeric feature columns as float32 ``train/val/test.npz``; returns the split description."""
    import pyarrow.parquet as pq
    import pyarrow.types as pat
    from sklearn.model_selection import train_test_split

    table = pq.read_table(data)
    if label not in table.column_names:
        raise SystemExit(f"{data} has no label column {label!r}; columns: {table.column_names}")
    columns = [
        name
        for name, kind in zip(table.column_names, table.schema.types)
        if name != label and (pat.is_floating(kind) or pat.is_integer(kind))
    ]
    features = np.stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], axis=1
    ).astype(np.float32)
    labels = table.column(label).to_numpy(zero_copy_only=False).astype(np.int64)
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise SystemExit(f"{data}: {int((~finite).sum())} rows with missing/non-finite values")
    rows = np.arange(len(labels))
    rest, test = train_test_split(
        rows, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED, shuffle=True
    )
    train, val = train_test_split(
        rest, test_size=VAL_FRACTION, stratify=labels[rest], random_state=SPLIT_SEED, shuffle=True
    )
    work.mkdir(parents=True, exist_ok=True)
    split: dict[str, Any] = {
        "data": str(data),
        "label": label,
        "columns": columns,
        "split_seed": SPLIT_SEED,
        "test_fraction": TEST_FRACTION,
        "val_fraction_of_rest": VAL_FRACTION,
    }
    for name, index in (("train", np.sort(train)), ("val", np.sort(val)), ("test", np.sort(test))):
        path = work / f"{name}.npz"
        np.savez(path, features=features[index], labels=labels[index], columns=np.asarray(columns))
        split[name] = {
            "path": str(path),
            "rows": len(index),
            "positive_fraction": round(float(labels[index].mean()), 4),
        }
    return split


# ---------------------------------------------------------------------------------------------- probes
def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    return [(x - mean) / std for x in (train, *others)]


def _logreg(c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000, random_state=seed)


def _scores(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    proba = model.predict_proba(x)[:, 1]
    return {
        "acc": float(100.0 * ((proba >= 0.5).astype(np.int64) == y).mean()),
        "auc": float(100.0 * roc_auc_score(y, proba)),
    }


def linear_probe(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    train_rows: np.ndarray,
    split: str,
    c_grid: tuple[float, ...],
    seed: int,
) -> dict[str, Any]:
    """Standardize with all training rows (unlabelled statistics), fit on ``train_rows``, choose C by
    validation accuracy; score ``split`` (val: the best C's validation score; test: refit, test score)."""
    xtr, xva, xte = _standardize(feats["train"], feats["val"], feats["test"])
    ytr = labels["train"]
    by_c = {}
    for c in c_grid:
        model = _logreg(c, seed).fit(xtr[train_rows], ytr[train_rows])
        by_c[c] = (_scores(model, xva, labels["val"]), model)
    best = max(c_grid, key=lambda c: (by_c[c][0]["acc"], by_c[c][0]["auc"]))
    result: dict[str, Any] = {"C": best, "val_by_C": {str(c): by_c[c][0] for c in c_grid}}
    if split == "val":
        result.update(by_c[best][0])
    else:  # the model at the chosen C was fitted on the training rows only: it is the refit
        result.update(_scores(by_c[best][1], xte, labels["test"]))
    return result


def knn_probe(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], split: str) -> dict[str, float]:
    from selfsup.eval.knn import knn_accuracy

    out = knn_accuracy(
        torch.from_numpy(feats["train"]),
        torch.from_numpy(labels["train"]),
        torch.from_numpy(feats[split]),
        torch.from_numpy(labels[split]),
        k=(20, 200),
    )
    return {k: float(v) for k, v in out.items() if "top1" in k}


def few_label_rows(labels: np.ndarray, budget: int | None, seed: int) -> np.ndarray:
    rows = np.arange(len(labels))
    if budget is None or budget >= len(labels):
        return rows
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(rows, train_size=budget, stratify=labels, random_state=seed, shuffle=True)
    return np.sort(chosen)


def probe_all(
    feats: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    split: str,
    budgets: list[int | None],
    c_grid: tuple[float, ...],
    seed: int,
    knn: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"dim": int(feats["train"].shape[1])}
    for budget in budgets:
        rows = few_label_rows(labels["train"], budget, seed)
        out[f"linear@{budget or 'all'}"] = linear_probe(feats, labels, rows, split, c_grid, seed)
    if knn:
        out["knn"] = knn_probe(feats, labels, split)
    return out


# ---------------------------------------------------------------------------------------------- runs
def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {"train.progress": False, "train.checkpoint_every": 0}
    pairs = (
        ("method.temperature", args.temperature),
        ("augment.params.corruption_p", args.corruption_p),
        ("augment.params.corruption", args.corruption),
        ("augment.params.noise_std", args.noise_std),
        ("encoder.hidden_dim", args.hidden_dim),
        ("encoder.num_layers", args.num_layers),
        ("optim.name", args.optimizer),
        ("optim.lr", args.lr),
        ("optim.lr_scaling", args.lr_scaling),
        ("optim.weight_decay", args.weight_decay),
    )
    o.update({k: v for k, v in pairs if v is not None})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        import yaml

        o[key] = yaml.safe_load(value)
    # augment.params.X is not a config key: gather the view policy's options into one dict.
    params = {k.split(".", 2)[2]: o.pop(k) for k in list(o) if k.startswith("augment.params.")}
    if params:
        o["augment.params"] = params
    return o


def extract(
    run_dir: Path, split: dict[str, Any], hidden: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float, dict[int, dict[str, np.ndarray]]]:
    """Pooled features, standardized raw inputs, extraction seconds (pooled only) and, with
    ``hidden``, every block's output ``{layer: {split: (N, C)}}`` (layers 1..num_layers)."""
    import selfsup
    from selfsup.eval.features import raw_input_features

    model = selfsup.load(run_dir)
    feats, raw = {}, {}
    layers: dict[int, dict[str, np.ndarray]] = {}
    elapsed = 0.0
    for name in ("train", "val", "test"):
        dataset = model.load_data(split[name]["path"])
        start = time.perf_counter()
        feats[name] = np.asarray(model.features(dataset, cache=False), dtype=np.float32)
        elapsed += time.perf_counter() - start
        raw[name] = np.asarray(raw_input_features(dataset, model.transform), dtype=np.float32)
        if hidden:
            wanted = list(range(1, model.encoder.num_layers + 1))
            per_layer = model.features(dataset, layers=wanted, cache=False)
            for layer, values in per_layer.items():
                layers.setdefault(layer, {})[name] = np.asarray(values, dtype=np.float32)
    return feats, raw, elapsed, layers


def pretrain(
    split: dict[str, Any], out: Path, steps: int | None, args: argparse.Namespace, seed: int
) -> dict:
    import selfsup

    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    start = time.perf_counter()
    result = selfsup.pretrain(
        data=split["train"]["path"],
        out=out,
        steps=steps,
        batch_size=args.batch_size,
        seed=seed,
        device="cpu",
        config=args.config,
        overrides=overrides_from(args),
    )
    summary = dict(result.summary)
    summary["bench_wall_s"] = round(time.perf_counter() - start, 2)
    return summary


def labels_of(split: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.load(split[name]["path"])["labels"].astype(np.int64) for name in ("train", "val", "test")
    }


# ---------------------------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict[str, Any], budgets: list[int | None], split: str) -> str:
    first = next(iter(results["seeds"].values()))
    layer_rows = sorted(k for k in first if k.startswith("ssl_layer"))
    kinds = [
        k for k in ("ssl", *layer_rows, "random", "raw") if any(k in s for s in results["seeds"].values())
    ]
    header = ["representation", "dim"]
    for b in budgets:
        header += [f"acc@{b or 'all'}", f"AUC@{b or 'all'}"]
    header += ["kNN@20", "kNN@200"]
    lines = [
        f"{split} split, mean ± std over seeds {list(results['seeds'])}",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for kind in kinds:
        per = [s[kind] for s in results["seeds"].values() if kind in s]
        row = [kind, str(per[0]["dim"])]
        for b in budgets:
            key = f"linear@{b or 'all'}"
            row += [_fmt([p[key]["acc"] for p in per]), _fmt([p[key]["auc"] for p in per])]
        for k in ("knn_top1@20", "knn_top1@200"):
            row.append(_fmt([p["knn"][k] for p in per if "knn" in p]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Parquet table (default: HIGGS sample)")
    p.add_argument("--label", default="label", help="label column (default: label)")
    p.add_argument("--work", type=Path, required=True, help="folder for the split .npz files and the runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="SSL steps (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--split", choices=("val", "test"), default="test", help="val: sweep mode, test untouched")
    p.add_argument(
        "--label-budgets",
        type=int,
        nargs="*",
        default=[1000, 100],
        help="few-label probes (stratified samples of the training rows); 'all' is always run",
    )
    p.add_argument("--c-grid", type=float, nargs="+", default=list(C_GRID))
    p.add_argument("--no-knn", action="store_true")
    p.add_argument(
        "--probe-layers",
        action="store_true",
        help="also probe the SSL encoder's earlier blocks (rows ssl_layerK)",
    )
    p.add_argument("--skip-baselines", action="store_true", help="no random-init / raw rows (sweeps)")
    p.add_argument("--overwrite", action="store_true", help="replace this tag's run folders in WORK/runs")
    p.add_argument("--tag", default="ssl", help="name of this setting (run folders, JSON)")
    p.add_argument("--json", type=Path, default=None, help="default: WORK/results-TAG-SPLIT.json")
    p.add_argument("--config", default=None, help="a recipe name or path (e.g. simclr_vectors)")
    g = p.add_argument_group("SSL settings (unset: the config's defaults)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--corruption-p", type=float)
    g.add_argument("--corruption", choices=("batch_marginal", "zero"))
    g.add_argument("--noise-std", type=float)
    g.add_argument("--hidden-dim", type=int)
    g.add_argument("--num-layers", type=int)
    g.add_argument("--optimizer", choices=("lars", "adamw", "sgd"))
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-scaling", choices=("linear", "sqrt", "none"))
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config key")
    args = p.parse_args(argv)

    split = write_split(args.data, args.label, args.work)
    labels = labels_of(split)
    budgets: list[int | None] = [None, *args.label_budgets]
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "tag": args.tag,
        "split": {k: v for k, v in split.items() if k != "columns"},
        "eval_split": args.split,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "config": args.config,
        "overrides": overrides_from(args),
        "c_grid": args.c_grid,
        "seeds": {},
    }
    print(
        f"split (seed {SPLIT_SEED}): train {split['train']['rows']}, val {split['val']['rows']}, "
        f"test {split['test']['rows']} rows of {len(split['columns'])} features",
        flush=True,
    )
    for seed in args.seeds:
        record: dict[str, Any] = {}
        ssl_dir = args.work / "runs" / f"{args.tag}-seed{seed}"
        record["ssl_run"] = pretrain(split, ssl_dir, args.steps, args, seed)
        feats, raw, t_extract, hidden = extract(ssl_dir, split, args.probe_layers)
        record["extract_seconds"] = round(t_extract, 3)
        start = time.perf_counter()
        record["ssl"] = probe_all(
            feats, labels, args.split, budgets, tuple(args.c_grid), seed, not args.no_knn
        )
        record["probe_seconds"] = round(time.perf_counter() - start, 2)
        for layer, layer_feats in hidden.items():  # the last block is the pooled output, probed above
            if layer < len(hidden):
                record[f"ssl_layer{layer}"] = probe_all(
                    layer_feats, labels, args.split, budgets, tuple(args.c_grid), seed, False
                )
        if not args.skip_baselines:
            rand_dir = args.work / "runs" / f"{args.tag}-random-seed{seed}"
            pretrain(split, rand_dir, 0, args, seed)
            rfeats, _, _, _ = extract(rand_dir, split)
            record["random"] = probe_all(
                rfeats, labels, args.split, budgets, tuple(args.c_grid), seed, not args.no_knn
            )
            record["raw"] = probe_all(
                raw, labels, args.split, budgets, tuple(args.c_grid), seed, not args.no_knn
            )
        results["seeds"][str(seed)] = record
        s = record["ssl"]["linear@all"]
        print(
            f"seed {seed}: ssl acc {s['acc']:.2f} auc {s['auc']:.2f} (C={s['C']}), "
            f"pretrain {record['ssl_run']['bench_wall_s']} s, extract {t_extract:.2f} s, "
            f"probes {record['probe_seconds']} s",
            flush=True,
        )
    text = table(results, budgets, args.split)
    results["table"] = text
    print(text)
    target = args.json or args.work / f"results-{args.tag}-{args.split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
