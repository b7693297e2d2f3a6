"""Speech SSL on CPU: pretrain each method's recipe on LJ Speech + FSDD's train split (no labels), then
probe FSDD SUPERB-style beside log-mel, MFCC and random-init baselines through the same heads.

Per pretrained run (``--methods``, ``--seeds`` pretraining seeds):

* digits and speakers, all labels: the weighted-layer probe (softmax weights over every hidden state
  and a linear head; settings on a validation split carved from FSDD's train split), with baselines;
* digits, 5 labels per digit, 5 label draws: a linear probe (fixed a-priori settings, see
  :mod:`selfsup.eval.fewshot`) on (a) the average of all hidden states and (b) the layer that a
  linear probe with all train labels picks on its validation split (it uses those labels to choose
  the layer: said in the table), beside log-mel, MFCC and random init;
* speaker verification EER on FSDD's test split (6 speakers: the mechanics only).

FSDD's test clips are never used for pretraining or for any choice. Results go to
``bench/RESULTS.md`` and ``OUT/speech_ssl.json``.

    python bench/speech_ssl.py --methods wav2vec2 hubert data2vec byol_a --out runs/speech
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine

from selfsup.api import load, pretrain
from selfsup.eval.fewshot import few_label_eval
from selfsup.eval.protocols import evaluate_layer, evaluate_linear, input_baselines
from selfsup.eval.verification import evaluate_verification

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FSDD = SHARED / "fsdd" / "metadata.csv"
POOL = f"{SHARED / 'speech' / 'ljspeech' / 'clips.tar'} + {FSDD}?split=train"
RECIPES = {
    "wav2vec2": "wav2vec2_speech_cpu",
    "hubert": "hubert_speech_cpu",
    "data2vec": "data2vec_speech_cpu",
    "byol_a": "byol_a_speech_cpu",
}


def fsdd(label: str, split: str) -> str:
    return f"{FSDD}?label={label}&split={split}"


def pretrain_method(name: str, seed: int, out: Path, steps: int | None, cache: str) -> tuple[Path, float]:
    """Pretrain ``name``'s recipe; HuBERT runs its two iterations end to end. (run dir, seconds)."""
    start = time.perf_counter()
    overrides = [f"train.seed={seed}", f"data.cache_dir={cache}", "train.progress=false"]
    if name == "hubert":
        from selfsup.hubert_pipeline import run_hubert

        result = run_hubert(
            POOL,
            out,
            iterations=2,
            layer=2,
            clusters=(100, 100),
            steps=steps,
            overrides=overrides,
            recipe=RECIPES[name],
            kmeans_seed=seed,
        )
        print(result.table, flush=True)
        return out / "iter1", time.perf_counter() - start
    pretrain(
        data=POOL,
        out=str(out),
        config=RECIPES[name],
        steps=steps,
        overrides=overrides,
        resume=(out / "checkpoints").exists() and not (out / "encoder.safetensors").exists(),
    )
    return out, time.perf_counter() - start


def _all_layers(features: dict[int, torch.Tensor]) -> torch.Tensor:
    """Every layer's pooled features averaged (their concatenation when the widths differ: ConvNets)."""
    values = [features[k] for k in sorted(features)]
    if len({v.shape[1] for v in values}) == 1:
        return torch.stack(values).mean(0)
    return torch.cat(values, dim=1)


def few_label_rows(run: Path, layer: int | None) -> dict[str, Any]:
    """5 labels per digit, 5 draws: {features: (mean, std)} for the encoder and the baselines."""
    model = load(run)
    train, test = model.load_data(fsdd("digit", "train")), model.load_data(fsdd("digit", "test"))
    layers = list(range(model.encoder.num_layers + 1))
    splits = (("train", train), ("test", test))
    per_layer = {k: model.features(d, layers=layers, progress=False) for k, d in splits}
    extractors = {"all layers": (_all_layers(per_layer["train"]), _all_layers(per_layer["test"]))}
    if layer is not None:
        extractors[f"layer {layer} (chosen with all train labels)"] = (
            per_layer["train"][layer],
            per_layer["test"][layer],
        )
    random = model.random_init()
    r_train, r_test = (random.features(d, layers=layers, progress=False) for d in (train, test))
    extractors["random init (all layers)"] = (_all_layers(r_train), _all_layers(r_test))
    extractors.update(input_baselines(model, train, test))
    rows = {}
    for name, (a, b) in extractors.items():
        result = few_label_eval(a, train.labels, b, test.labels, per_class=(5,), seeds=(0, 1, 2, 3, 4))
        top1 = result.results[0].top1
        rows[name] = [statistics.mean(top1), statistics.stdev(top1)]
    return rows


def evaluate_run(run: Path) -> dict[str, Any]:
    digits = evaluate_layer(run, fsdd("digit", "train"), fsdd("digit", "test"), baselines=True)
    digits_record = json.loads((run / "eval" / "layer.json").read_text())
    speakers = evaluate_layer(run, fsdd("speaker", "train"), fsdd("speaker", "test"), baselines=True)
    speakers_record = json.loads((run / "eval" / "layer.json").read_text())
    every_layer = list(range(load(run).encoder.num_layers + 1))
    linear = evaluate_linear(run, fsdd("digit", "train"), fsdd("digit", "test"), layers=every_layer)
    chosen = json.loads((run / "eval" / "linear.json").read_text()).get("selected", {}).get("features")
    # Feature sets are named "layer{L}/{pooling}".
    layer = int(str(chosen).removeprefix("layer").split("/")[0]) if str(chosen).startswith("layer") else None
    verification = evaluate_verification(run, fsdd("speaker", "test"), train=fsdd("speaker", "train"))
    return {
        "digits_layer": digits,
        "digits_baselines": digits_record.get("baselines", {}),
        "speakers_layer": speakers,
        "speakers_baselines": speakers_record.get("baselines", {}),
        "linear_digits": linear,
        "chosen_features": chosen,
        "few_label": few_label_rows(run, layer),
        "verification": verification,
        "verification_baselines": json.loads((run / "eval" / "verification.json").read_text()).get(
            "baselines"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, help="override the recipes' steps (quick checks)")
    parser.add_argument("--out", default="runs/speech")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    saved = Path(args.out) / "speech_ssl.json"  # runs measured by an earlier invocation are kept
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    for method in args.methods:
        for seed in args.seeds:
            out = Path(args.out) / f"{method}-seed{seed}"
            done = out / ("iter1" if method == "hubert" else "") / "summary.json"
            if done.exists() and f"{method}/{seed}" in results:
                continue
            if done.exists():  # already pretrained: evaluate it again
                run, seconds = done.parent, float(json.loads(done.read_text())["wall_seconds"])
            else:
                run, seconds = pretrain_method(method, seed, out, args.steps, str(Path(args.out) / "cache"))
            results[f"{method}/{seed}"] = {"run": str(run), "pretrain_seconds": seconds, **evaluate_run(run)}
            Path(args.out, "speech_ssl.json").write_text(json.dumps(results, indent=1, default=str))
            print(json.dumps(results[f"{method}/{seed}"], indent=1, default=str), flush=True)
    if not args.no_write:
        write_results(args, results)


def _pct(metrics: dict[str, Any], key: str = "top1") -> str:
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return "—" if value is None else f"{float(value):.1f}"


# The encoder each recipe trains: its random-init baseline row is that encoder's.
ENCODERS = {"wav2vec2": "wav2vec2", "hubert": "wav2vec2", "data2vec": "wav2vec2", "byol_a": "byol_a_cnn"}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _row(r: dict[str, Any]) -> list[float | None]:
    """The table's numbers for one run: minutes, digits, speakers, 5/class all layers and chosen, EER."""
    few = r["few_label"]
    chosen = next((v for k, v in few.items() if k.startswith("layer")), None)

    def number(metrics: Any, key: str = "top1") -> float | None:
        value = metrics.get(key) if isinstance(metrics, dict) else None
        return None if value is None else float(value)

    return [
        r["pretrain_seconds"] / 60,
        number(r["digits_layer"]),
        number(r["speakers_layer"]),
        few["all layers"][0],
        chosen[0] if chosen else None,
        number(r["verification"], "eer"),
    ]


def _summary_lines(results: dict[str, Any]) -> list[str]:
    """Per method: mean ± std over pretraining seeds of each column (the 5/class columns: of the
    per-seed means over 5 label draws)."""
    lines = []
    methods = sorted({key.split("/")[0] for key in results})
    for method in methods:
        runs = [r for key, r in results.items() if key.split("/")[0] == method]
        columns = list(zip(*(_row(r) for r in runs), strict=True))
        cells = [
            "—" if any(v is None for v in col) else _mean_std([float(v) for v in col]) for col in columns
        ]
        lines.append(
            f"| {method} ({len(runs)} seed{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells) + " |"
        )
    return lines


def _baseline_lines(results: dict[str, Any]) -> list[str]:
    """Input baselines (log-mel, MFCC: the same in every run) and each encoder at random init."""
    lines = []
    by_encoder: dict[str, dict[str, Any]] = {}
    for key, r in results.items():
        by_encoder.setdefault(ENCODERS.get(key.split("/")[0], key), r)
    if not by_encoder:
        return lines
    first = next(iter(by_encoder.values()))
    rows = [("log-mel", "log-mel", "log-mel", first), ("mfcc", "mfcc", "mfcc", first)]
    rows += [
        (f"random init ({encoder})", "random init", "random init (all layers)", r)
        for encoder, r in sorted(by_encoder.items())
    ]
    for label, name, few_key, r in rows:
        few = r["few_label"].get(few_key)
        ver = (r.get("verification_baselines") or {}).get(name, {})
        lines.append(
            f"| baseline: {label} | — | {_pct(r['digits_baselines'].get(name, {}))} | "
            f"{_pct(r['speakers_baselines'].get(name, {}))} | "
            + (f"{few[0]:.1f} ± {few[1]:.1f}" if few else "—")
            + f" | — | {_pct(ver, 'eer')} |"
        )
    return lines


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Append the tables to bench/RESULTS.md: every run, then per method the mean ± std over
    pretraining seeds, then the baselines (each encoder's random init)."""
    command = "python bench/speech_ssl.py " + " ".join(sys.argv[1:])
    header = (
        "| {} | pretrain min | digits, layer probe | speakers, layer probe | "
        "digits, 5 labels/class: all layers | digits, 5/class: chosen layer | speaker EER (%) |"
    )
    lines = [
        f"\n### Speech SSL on CPU: FSDD probes after pretraining on LJ + FSDD train — {date.today()}\n",
        f"Machine: {machine()}. Command: `{command}`. Pretraining: each method's packaged recipe "
        "(`selfsup list recipes`) on LJ Speech (385 clips) + FSDD's train split (2,700 clips), no labels; "
        "FSDD's test split (300 clips) only for the scores. Baselines through the same heads: log-mel (80 "
        "bins) and MFCC (13 + deltas) mean+std statistics, and each encoder at random init.\n",
        header.format("run (method/seed)"),
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        few = r["few_label"]
        chosen = next((v for k, v in few.items() if k.startswith("layer")), None)
        lines.append(
            f"| {key} | {r['pretrain_seconds'] / 60:.1f} | {_pct(r['digits_layer'])} | "
            f"{_pct(r['speakers_layer'])} | "
            f"{few['all layers'][0]:.1f} ± {few['all layers'][1]:.1f} | "
            + (f"{chosen[0]:.1f} ± {chosen[1]:.1f} ({r['chosen_features']})" if chosen else "—")
            + f" | {_pct(r['verification'], 'eer')} |"
        )
    lines.append(
        "\nPer method, mean ± std over pretraining seeds (5/class columns: of each seed's mean over its 5 "
        "label draws):\n"
    )
    lines += [header.format("method (seeds)"), "|---|---|---|---|---|---|---|", *_summary_lines(results)]
    lines += _baseline_lines(results)
    lines.append(
        "\nLayer probe: SUPERB's weighted sum of every hidden state + a linear head, settings on a "
        "validation split of FSDD train. 5 labels/class: mean ± std over 5 label draws, fixed a-priori "
        'settings (selfsup.eval.fewshot); "chosen layer" is the layer a linear probe with all FSDD-train '
        "labels picked on its validation split (so that column uses more labels to choose the layer). "
        "Speaker EER: cosine scores on all FSDD-test pairs, 6 speakers: it tests the mechanics only.\n"
    )
    with RESULTS.open("a", encoding="utf-8") as handle:  # appending a log: not a file the library writes
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
