"""The evaluation protocols: a pretrained run, labelled data sources, a probe on cached features, and
one JSON record per protocol in ``RUN/eval/<protocol>.json``. Each function mirrors
``selfsup eval PROTOCOL`` and works for every modality, since it only sees features.

Every classification record has the same shape (``docs/ARCHITECTURE.md``, "Evaluation records"):
``{"protocol", "train", "test", "metrics": {name: value}, "classes", "confusion", "per_class"}`` plus
what the protocol adds (the linear grid and its selection, few-label draws, layer weights, ...), so
``selfsup report`` can show any of them.

Baselines (``baselines=True``): the same encoder at its initial weights, and the inputs themselves
through the same heads: the raw inputs for images and vectors, and for audio — where a raw waveform
is no feature — the mean and standard deviation over the valid frames of log-mel filterbanks (80
bins) and of MFCCs (13 + deltas + delta-deltas), computed by :mod:`selfsup.audio.frontend`
(:func:`input_baselines`). Speaker verification is in :mod:`selfsup.eval.verification`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.data.base import UNKNOWN_LABEL, Dataset
from selfsup.errors import ConfigError
from selfsup.eval.features import POOLINGS, FrontendEncoder, extract_features, raw_input_features
from selfsup.eval.knn import KNNProbe
from selfsup.eval.metrics import confusion_matrix, per_class_accuracy
from selfsup.eval.splits import random_subset
from selfsup.io import write_text_atomic

Run = Any  # a run directory (str / Path) or a selfsup.api.Pretrained


def as_model(run: Run, device: str = "cpu") -> Any:
    from selfsup.api import Pretrained, load

    return run if isinstance(run, Pretrained) else load(run, device)


def labelled(model: Any, spec: str | Dataset, protocol: str) -> Dataset:
    """``spec`` loaded as the run loads data, with a clear error when it has no labels."""
    dataset = model.load_data(spec) if isinstance(spec, str) else spec
    if not dataset.has_labels:
        raise ConfigError(
            f"{protocol} needs labels, but {getattr(dataset, 'source', spec)!r} has none "
            "(class sub-folders, .cls files or a 'labels' array)"
        )
    return dataset


def classification_record(predicted: Tensor, labels: Tensor, classes: Any) -> dict[str, Any]:
    """Confusion matrix (rows: true class, columns: predicted) and per-class accuracy (%) of the
    samples whose label is known."""
    keep = labels != UNKNOWN_LABEL
    num_classes = int(max(int(labels.max()), int(predicted.max()) if predicted.numel() else 0)) + 1
    if classes is not None:
        num_classes = max(num_classes, len(classes))
    confusion = confusion_matrix(predicted[keep], labels[keep], num_classes)
    accuracy = per_class_accuracy(confusion)
    return {
        "classes": list(classes) if classes is not None else [str(c) for c in range(num_classes)],
        "confusion": confusion.tolist(),
        "per_class": {"accuracy": [None if v != v else round(float(v), 4) for v in accuracy.tolist()]},
    }


def write_record(model: Any, protocol: str, out: str | Path | None, record: dict[str, Any]) -> Path:
    """Write ``record`` (with ``protocol`` first) to ``out`` or ``RUN/eval/<protocol>.json``."""
    target = Path(out) if out is not None else model.run_dir / "eval" / f"{protocol}.json"
    write_text_atomic(target, json.dumps({"protocol": protocol, **record}, indent=1) + "\n")
    return target


def _spec(source: str | Dataset) -> str:
    return source if isinstance(source, str) else str(getattr(source, "source", "dataset"))


# ---------------------------------------------------------------------------- kNN


def evaluate_knn(
    run: Run,
    train: str | Dataset,
    test: str | Dataset,
    *,
    k: tuple[int, ...] | None = None,
    temperature: float | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
) -> dict[str, float]:
    """Weighted kNN accuracy (top-1/top-5 in %, :class:`~selfsup.eval.knn.KNNProbe`) of frozen features,
    with the confusion matrix and per-class accuracy of the first k; saved to ``RUN/eval/knn.json``."""
    model = as_model(run, device)
    train_data, test_data = labelled(model, train, "kNN"), labelled(model, test, "kNN")
    probe = KNNProbe(
        k=tuple(k or model.config.eval.knn_k), temperature=temperature or model.config.eval.knn_temperature
    )
    probe.fit(model.features(train_data), train_data.labels)
    test_features = model.features(test_data)
    metrics = probe.evaluate(test_features, test_data.labels)
    record = {"train": _spec(train), "test": _spec(test), "k": list(probe.ks), "metrics": metrics}
    record.update(
        classification_record(probe.predict(test_features), test_data.labels, test_data.info.classes)
    )
    write_record(model, "knn", out, record)
    return metrics


# ---------------------------------------------------------------------------- linear probe


def feature_sets(
    model: Any, data: Dataset, layers: list[int] | None, poolings: tuple[str, ...]
) -> dict[str, Tensor]:
    """``{"pooled/mean": (N, D), "layer3/max": ...}``: the candidate feature sets of a probe grid."""
    for pooling in poolings:
        if pooling not in POOLINGS or pooling == "none":
            raise ConfigError(f"pooling must be mean or max, got {pooling!r}")
    sets: dict[str, Tensor] = {}
    for pooling in poolings:
        if layers is None:
            sets[f"pooled/{pooling}"] = model.features(data, pooling=pooling)
        else:
            per_layer = model.features(data, layers=layers, pooling=pooling)
            sets.update({f"layer{layer}/{pooling}": per_layer[layer] for layer in layers})
    return sets


def load_targets(targets: str | Path | Tensor, count: int, what: str) -> Tensor:
    """Float regression targets ``(N,)`` or ``(N, K)`` for the ``count`` samples of ``what``, in the
    data's order: a tensor, or a ``.npy`` file (read without unpickling)."""
    if isinstance(targets, Tensor):
        values = targets.float()
    else:
        path = Path(targets)
        try:
            values = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read regression targets {str(path)!r}: {error}") from None
    if values.ndim not in (1, 2) or values.shape[0] != count:
        raise ConfigError(
            f"the regression targets of {what} have shape {tuple(values.shape)}, but it holds {count} "
            "samples: give (N,) or (N, K) values in the data's order"
        )
    if not torch.isfinite(values).all():
        raise ConfigError(f"the regression targets of {what} contain NaN or infinite values")
    return values


def evaluate_linear(
    run: Run,
    train: str | Dataset,
    test: str | Dataset,
    *,
    layers: list[int] | None = None,
    poolings: tuple[str, ...] = ("mean",),
    baselines: bool = False,
    train_targets: str | Path | Tensor | None = None,
    test_targets: str | Path | Tensor | None = None,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
    **probe_options: Any,
) -> dict[str, float]:
    """Linear probe on frozen features (:class:`~selfsup.eval.linear.LinearProbe`): a grid of learning
    rates x weight decays x the feature sets (``layers`` x ``poolings``) trained jointly, selected on a
    validation split of the training data (fixed ``seed``), scored on ``test``: top-1/top-5 and
    balanced accuracy, or R² / RMSE when ``train_targets`` / ``test_targets`` give float regression
    targets (``.npy`` files or tensors in the data's order) instead of the data's class labels. With
    ``baselines`` the same protocol also runs on a randomly initialised encoder and the input
    baselines (raw inputs; log-mel and MFCC statistics for audio): the rows every SSL number needs
    beside it. Saved to ``RUN/eval/linear.json``."""
    from selfsup.eval.linear import LinearProbe

    model = as_model(run, device)
    if (train_targets is None) != (test_targets is None):
        raise ConfigError("give regression targets for both the training and the test data, or neither")
    regression = train_targets is not None
    if regression:
        train_data = model.load_data(train) if isinstance(train, str) else train
        test_data = model.load_data(test) if isinstance(test, str) else test
        y_train = load_targets(train_targets, len(train_data), _spec(train))  # type: ignore[arg-type]
        y_test = load_targets(test_targets, len(test_data), _spec(test))  # type: ignore[arg-type]
    else:
        train_data, test_data = (
            labelled(model, train, "the linear probe"),
            labelled(model, test, "the linear probe"),
        )
        y_train, y_test = train_data.labels, test_data.labels
    extractors: dict[str, Any] = {"encoder": model}
    if baselines:
        extractors["random init"] = model.random_init()
        for name, pair in input_baselines(model, train_data, test_data).items():
            extractors[name] = pair
    results: dict[str, dict[str, Any]] = {}
    task = "regression" if regression else "classification"
    for name, extractor in extractors.items():
        if isinstance(extractor, tuple):  # an input baseline's (train, test) features
            key = "raw" if name == "raw inputs" else name
            train_sets, test_sets = {key: extractor[0]}, {key: extractor[1]}
        else:
            train_sets = feature_sets(extractor, train_data, layers, poolings)
            test_sets = feature_sets(extractor, test_data, layers, poolings)
        probe = LinearProbe(seed=seed, device=str(model.device), task=task, **probe_options)
        probe.fit(train_sets, y_train)
        results[name] = {"metrics": probe.evaluate(test_sets, y_test), "probe": probe, "test_sets": test_sets}
    main = results["encoder"]
    record: dict[str, Any] = {
        "train": _spec(train),
        "test": _spec(test),
        "seed": seed,
        "task": task,
        "metrics": main["metrics"],
        "selected": main["probe"].selected,
        "grid": main["probe"].grid,
    }
    if not regression:
        predicted = main["probe"].predict(main["test_sets"])
        record.update(classification_record(predicted, test_data.labels, test_data.info.classes))
    if baselines:
        record["baselines"] = {name: r["metrics"] for name, r in results.items() if name != "encoder"}
    write_record(model, "linear", out, record)
    return main["metrics"]


# ---------------------------------------------------------------------------- few labels


# The raw-input baseline holds every input flattened in memory; above this it is skipped with a warning
# (e.g. 50,000 ImageNet-sized images would need 30 GB), and the record says so.
RAW_BASELINE_BYTES = 2 * 2**30


def raw_inputs(model: Any, train: Dataset, test: Dataset) -> tuple[Tensor, Tensor] | None:
    """The raw-input baseline ``(train (N, prod(shape)), test (M, ...))`` through the run's input transform,
    or None (with a warning) when it would take more than :data:`RAW_BASELINE_BYTES`."""
    width = raw_input_features(train.subset(torch.arange(min(1, len(train)))), model.transform).shape[1]
    needed = 4 * width * (len(train) + len(test))
    if needed > RAW_BASELINE_BYTES:
        warnings.warn(
            f"raw-input baseline skipped: {len(train) + len(test)} inputs of {width} values would take "
            f"{needed / 2**30:.1f} GiB (more than {RAW_BASELINE_BYTES / 2**30:.0f} GiB)",
            stacklevel=2,
        )
        return None
    return raw_input_features(train, model.transform), raw_input_features(test, model.transform)


def audio_frontends(model: Any) -> dict[str, FrontendEncoder]:
    """The audio input baselines as 0-layer encoders at the run's sample rate: ``"log-mel"`` (80 log-mel
    bins, 25 ms windows every 10 ms) and ``"mfcc"`` (13 MFCCs + deltas + delta-deltas), each pooled
    into ``[mean, std]`` over the valid frames (:class:`~selfsup.eval.features.FrontendEncoder`)."""
    from selfsup.audio.frontend import MFCC, LogMelFrontend

    rate = float(model.info.sample_rate or getattr(model.transform, "sample_rate", None) or 16000)
    hop, window = round(0.010 * rate), round(0.025 * rate)
    frontends = {
        "log-mel": LogMelFrontend(
            sample_rate=rate, n_fft=window, win_length=window, hop_length=hop, n_mels=80
        ),
        "mfcc": MFCC(
            sample_rate=rate, n_fft=window, win_length=window, hop_length=hop, n_mfcc=13, deltas=True
        ),
    }
    return {name: FrontendEncoder(frontend).to(model.device).eval() for name, frontend in frontends.items()}


def frontend_features(model: Any, frontend: FrontendEncoder, data: Dataset) -> Tensor:
    """``(N, 2C)`` pooled statistics of a front-end over ``data``, through the run's input transform and
    the same duration-sized batches as the encoder's features (not cached: cheaper to recompute)."""
    return extract_features(
        frontend,
        data,
        model.transform,
        batch_size=model.config.eval.batch_size,
        device=model.device,
        workers=model.config.data.workers,
    )


def input_baselines(model: Any, train: Dataset, test: Dataset) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (train features, test features)}`` of the input baselines: for audio ``"log-mel"`` and
    ``"mfcc"`` statistics (:func:`audio_frontends`), otherwise ``"raw inputs"`` (left out when too large,
    see :func:`raw_inputs`). ``test`` may be ``train`` (computed once)."""
    if model.info.modality == "audio":
        pairs = {}
        for name, frontend in audio_frontends(model).items():
            a = frontend_features(model, frontend, train)
            pairs[name] = (a, a if test is train else frontend_features(model, frontend, test))
        return pairs
    raw = raw_inputs(model, train, test)
    return {} if raw is None else {"raw inputs": raw}


def _pair(extractor: Any, train: Dataset, test: Dataset, **options: Any) -> tuple[Any, Any]:
    a = extractor.features(train, **options)
    return a, (a if test is train else extractor.features(test, **options))


def baseline_extractors(model: Any, train: Dataset, test: Dataset) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (train features, test features)}`` for the encoder, the same encoder randomly
    initialised and the input baselines (:func:`input_baselines`: raw inputs through the run's input
    transform, or log-mel and MFCC statistics for audio): the rows every table needs."""
    untrained = model.random_init()
    extractors = {"encoder": _pair(model, train, test), "random init": _pair(untrained, train, test)}
    extractors.update(input_baselines(model, train, test))
    return extractors


def few_label_by_features(
    extractors: dict[str, tuple[Tensor, Tensor]],
    train: Dataset,
    test: Dataset,
    *,
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """``{name: FewShotResult}``: :func:`~selfsup.eval.fewshot.few_label_eval` (``options``: per_class,
    fractions, seeds) on each extractor's ``(train features, test features)``."""
    from selfsup.eval.fewshot import few_label_eval

    return {
        name: few_label_eval(a, train.labels, b, test.labels, probe_options={"device": device}, **options)
        for name, (a, b) in extractors.items()
    }


def fewshot_record(train: str, test: str, seeds: tuple[int, ...], results: dict[str, Any]) -> dict[str, Any]:
    """The ``fewshot`` evaluation record of :func:`few_label_by_features` results (the encoder's first)."""
    by_features = {name: result.to_dict()["results"] for name, result in results.items()}
    main = by_features["encoder"]
    return {
        "train": train,
        "test": test,
        "seeds": list(seeds),
        "metrics": {f"top1 {r['setting']}": r["mean"] for r in main},
        "results": main,
        "results_by_features": by_features,
    }


def evaluate_fewshot(
    run: Run,
    train: str | Dataset,
    test: str | Dataset,
    *,
    per_class: tuple[int, ...] | None = None,
    fractions: tuple[float, ...] | None = None,
    seeds: int | tuple[int, ...] = 5,
    baselines: bool = True,
    device: str = "cpu",
    out: str | Path | None = None,
) -> str:
    """Few-label linear evaluation (:func:`~selfsup.eval.fewshot.few_label_eval`): N labels per class
    (default 1, 5, 10) or label fractions, ``seeds`` label draws each (mean ± spread), for the encoder
    and — with ``baselines`` — a random-init encoder and the raw inputs. Saved to
    ``RUN/eval/fewshot.json``; returns a printable table."""
    model = as_model(run, device)
    train_data, test_data = (
        labelled(model, train, "few-label evaluation"),
        labelled(model, test, "few-label evaluation"),
    )
    seed_list = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
    if not seed_list:
        raise ConfigError("--seeds must be at least 1")
    if per_class is None and fractions is None:
        per_class = (1, 5, 10)
    if baselines:
        extractors = baseline_extractors(model, train_data, test_data)
    else:
        extractors = {"encoder": (model.features(train_data), model.features(test_data))}
    options = {"per_class": per_class, "fractions": fractions, "seeds": seed_list}
    results = few_label_by_features(extractors, train_data, test_data, device=str(model.device), **options)
    tables = [f"{name}:\n{result.table()}" for name, result in results.items()]
    record = fewshot_record(_spec(train), _spec(test), seed_list, results)
    write_record(model, "fewshot", out, record)
    return "\n\n".join(tables)


# ---------------------------------------------------------------------------- weighted layers, clusters


def stacked_layers(model: Any, data: Dataset) -> Tensor:
    """``(N, L, D)``: every hidden state pooled, zero-padded to the widest one when their widths differ
    (a ConvNet's stages), so that one softmax weighting spans all ``num_layers + 1`` of them; the
    padded coordinates are zero for every sample, so they carry nothing."""
    layers = list(range(model.encoder.num_layers + 1))
    per_layer = model.features(data, layers=layers)
    width = max(per_layer[layer].shape[1] for layer in layers)
    stacked = torch.zeros(len(data), len(layers), width)
    for i, layer in enumerate(layers):
        stacked[:, i, : per_layer[layer].shape[1]] = per_layer[layer]
    return stacked


def evaluate_layer(
    run: Run,
    train: str | Dataset,
    test: str | Dataset,
    *,
    level: str = "utterance",
    baselines: bool = False,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
    **probe_options: Any,
) -> dict[str, float]:
    """SUPERB-style weighted-layer probe (:class:`~selfsup.eval.layer.WeightedLayerProbe`): softmax
    weights over all hidden states and a linear head, fitted on ``train``, scored on ``test``. The
    weights are saved in ``RUN/eval/layer.json`` and drawn in ``RUN/eval/layer_weights.png``.
    Any label column works: digits or keywords (utterance classification), speakers (speaker
    identification), emotions, languages.

    With ``baselines`` the same probe (same settings and seed) is fitted on the randomly initialised
    encoder's hidden states and on the input baselines as a single "layer" (:func:`input_baselines`);
    their metrics go under ``"baselines"`` and the random-init weights under ``"baseline_layer_weights"``.

    Utterance level (one label per sample) works for every encoder. Frame level needs a label per
    frame, which no data source provides yet (the speech issue adds aligned sources); the probe
    itself (``level="frame"`` on :class:`~selfsup.eval.features.FrameFeatures`) is ready for them."""
    from selfsup.eval.layer import WeightedLayerProbe, plot_layer_weights

    if level != "utterance":
        raise ConfigError(
            "frame-level probing needs per-frame labels, and no data source provides them yet; "
            "use --level utterance (or WeightedLayerProbe(level='frame') on FrameFeatures in Python)"
        )
    model = as_model(run, device)
    train_data, test_data = (
        labelled(model, train, "the layer probe"),
        labelled(model, test, "the layer probe"),
    )
    probe = WeightedLayerProbe(level="utterance", seed=seed, device=str(model.device), **probe_options)
    probe.fit(stacked_layers(model, train_data), train_data.labels)
    test_features = stacked_layers(model, test_data)
    metrics = probe.evaluate(test_features, test_data.labels)
    weights = [float(w) for w in probe.layer_weights]
    target = Path(out) if out is not None else model.run_dir / "eval" / "layer.json"
    plot_layer_weights(
        weights, target.with_name(target.stem + "_weights.png"), title=f"layer weights: {model.run_dir.name}"
    )
    record: dict[str, Any] = {
        "train": _spec(train),
        "test": _spec(test),
        "metrics": metrics,
        "layer_weights": weights,
        "probe": probe.to_dict(),
    }
    record.update(
        classification_record(probe.predict(test_features), test_data.labels, test_data.info.classes)
    )
    if baselines:
        options = {"level": "utterance", "seed": seed, "device": str(model.device), **probe_options}
        untrained = model.random_init()
        sets = {"random init": (stacked_layers(untrained, train_data), stacked_layers(untrained, test_data))}
        for name, (a, b) in input_baselines(model, train_data, test_data).items():
            sets[name] = (a.unsqueeze(1), b.unsqueeze(1))  # one "layer": (N, 1, D)
        record["baselines"], record["baseline_layer_weights"] = {}, {}
        for name, (a, b) in sets.items():
            baseline = WeightedLayerProbe(**options).fit(a, train_data.labels)
            record["baselines"][name] = baseline.evaluate(b, test_data.labels)
            if a.shape[1] > 1:
                record["baseline_layer_weights"][name] = [float(w) for w in baseline.layer_weights]
    write_record(model, "layer", target, record)
    return metrics


def evaluate_cluster(
    run: Run,
    data: str | Dataset,
    *,
    k: int | None = None,
    baselines: bool = False,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
) -> dict[str, float]:
    """k-means on the features of ``data`` (:class:`~selfsup.eval.cluster.ClusterProbe`; k = the number
    of classes by default), scored against its labels: NMI, ARI (0..1) and Hungarian-matched accuracy
    (%). With ``baselines`` also for a random-init encoder and the raw inputs. Saved to
    ``RUN/eval/cluster.json``."""
    from selfsup.eval.cluster import ClusterProbe

    model = as_model(run, device)
    dataset = labelled(model, data, "clustering")
    if baselines:
        extractors = {name: pair[0] for name, pair in baseline_extractors(model, dataset, dataset).items()}
    else:
        extractors = {"encoder": model.features(dataset)}
    results = {}
    for name, features in extractors.items():
        probe = ClusterProbe(k=k, seed=seed)
        results[name] = probe.fit(features, dataset.labels).evaluate(features, dataset.labels)
    record: dict[str, Any] = {"train": None, "test": _spec(data), "k": k, "metrics": results["encoder"]}
    if baselines:
        record["baselines"] = {name: r for name, r in results.items() if name != "encoder"}
    write_record(model, "cluster", out, record)
    return results["encoder"]


# ---------------------------------------------------------------------------- embedding map


def write_embedding_map(
    run: Run, data: str | Dataset | None = None, *, max_points: int = 2000, seed: int = 0, device: str = "cpu"
) -> Path:
    """``RUN/eval/embedding_map.json``: a 2-D PCA of the features of up to ``max_points`` samples of
    ``data`` (default: the run's validation source, else its training source), with their labels, for
    the report's map (:func:`selfsup.report.embedding.embedding_map`)."""
    from selfsup.report.embedding import embedding_map

    model = as_model(run, device)
    spec = data or model.config.data.val or model.config.data.source
    dataset = random_subset(model.load_data(spec) if isinstance(spec, str) else spec, max_points, seed)
    features = model.features(dataset, progress=False)
    result = embedding_map(features, dataset.labels, dataset.info.classes, max_points=max_points, seed=seed)
    result["data"] = _spec(spec)
    target = model.run_dir / "eval" / "embedding_map.json"
    write_text_atomic(target, json.dumps(result) + "\n")
    return target


__all__ = [
    "as_model",
    "audio_frontends",
    "baseline_extractors",
    "classification_record",
    "evaluate_cluster",
    "evaluate_fewshot",
    "evaluate_knn",
    "evaluate_layer",
    "evaluate_linear",
    "feature_sets",
    "few_label_by_features",
    "fewshot_record",
    "frontend_features",
    "input_baselines",
    "labelled",
    "stacked_layers",
    "write_embedding_map",
    "write_record",
]
