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
from throughput import machine  # noqa: E402

from selfsup.api import load, pretrain  # noqa: E402
from selfsup.eval.fewshot import few_label_eval  # noqa: E402
from selfsup.eval.protocols import evaluate_layer, evaluate_linear, input_baselines  # noqa: E402
from selfsup.eval.verification import evaluate_verification  # noqa: E402

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


def pretrain_method(name: str, seed: int, out: Path, steps: int | None) -> tuple[Path, float]:
    """Pretrain ``name``'s recipe; HuBERT runs its two iterations end to end. (run dir, seconds)."""
    start = time.perf_counter()
    if name == "hubert":
        from selfsup.hubert_pipeline import run_hubert

        result = run_hubert(
            POOL,
            out,
            iterations=2,
            layer=2,
            clusters=(100, 100),
            steps=steps,
            overrides=["--config", RECIPES[name]] if False else [f"train.seed={seed}"],
            config=RECIPES[name],
        )
        run = Path(result.rows[-1]["run"]) if result.rows else out / "iter1"
        return run, time.perf_counter() - start
    pretrain(data=POOL, out=str(out), config=RECIPES[name], seed=seed, steps=steps, resume=(out / "checkpoints").exists())
    return out, time.perf_counter() - start


def few_label_rows(run: Path, layer: int | None) -> dict[str, Any]:
    """5 labels per digit, 5 draws: {features: (mean, std)} for the encoder and the baselines."""
    model = load(run)
    train, test = model.load_data(fsdd("digit", "train")), model.load_data(fsdd("digit", "test"))
    stacked = {k: model.features(d, stack=True, progress=False) for k, d in (("train", train), ("test", test))}
    extractors = {"all layers averaged": (stacked["train"].mean(1), stacked["test"].mean(1))}
    if layer is not None:
        extractors[f"layer {layer} (chosen with all train labels)"] = (
            stacked["train"][:, layer],
            stacked["test"][:, layer],
        )
    random = model.random_init()
    r_train, r_test = (random.features(d, stack=True, progress=False) for d in (train, test))
    extractors["random init (all layers averaged)"] = (r_train.mean(1), r_test.mean(1))
    extractors.update(input_baselines(model, train, test))
    rows = {}
    for name, (a, b) in extractors.items():
        result = few_label_eval(a, train.labels, b, test.labels, per_class=(5,), seeds=(0, 1, 2, 3, 4))
        top1 = result.settings[0].top1
        rows[name] = (statistics.mean(top1), statistics.stdev(top1))
    return rows


def evaluate_run(run: Path) -> dict[str, Any]:
    digits = evaluate_layer(run, fsdd("digit", "train"), fsdd("digit", "test"), baselines=True)
    digits_record = json.loads((run / "eval" / "layer.json").read_text())
    speakers = evaluate_layer(run, fsdd("speaker", "train"), fsdd("speaker", "test"), baselines=True)
    speakers_record = json.loads((run / "eval" / "layer.json").read_text())
    linear = evaluate_linear(run, fsdd("digit", "train"), fsdd("digit", "test"), layers=["all"])
    chosen = json.loads((run / "eval" / "linear.json").read_text()).get("selected", {}).get("features")
    layer = int(str(chosen).split("layer")[-1].split("_")[0]) if chosen and "layer" in str(chosen) else None
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
        "verification_baselines": json.loads((run / "eval" / "verification.json").read_text()).get("baselines"),
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
    results: dict[str, Any] = {}
    for method in args.methods:
        for seed in args.seeds:
            out = Path(args.out) / f"{method}-seed{seed}"
            run, seconds = pretrain_method(method, seed, out, args.steps)
            results[f"{method}/{seed}"] = {"run": str(run), "pretrain_seconds": seconds, **evaluate_run(run)}
            Path(args.out, "speech_ssl.json").write_text(json.dumps(results, indent=1, default=str))
            print(json.dumps(results[f"{method}/{seed}"], indent=1, default=str), flush=True)
    if not args.no_write:
        write_results(args, results)


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    ...


if __name__ == "__main__":
    main()
