"""wav2vec 2.0 pretraining throughput: selfsup against Hugging Face ``Wav2Vec2ForPreTraining``.

Seconds of (unpadded) audio per second of training — forward, backward and an AdamW step — for the
same model size (conv 7 x C, Transformer L x D), precision, masking (mask_prob 0.65, span 10),
100 distractors and codebook (2 x 320), measured in the same process, alternating the two
implementations so both see the same machine state. Two workloads:

* ``equal``: clips of the same length (default 8 clips x 2 s of noise), no padding;
* ``real``: the real variable-length clips of LJ Speech + FSDD's train split at 16 kHz. Hugging Face
  gets batches of ``--hf-batch`` random clips padded to the longest, with an attention mask, as its
  pretraining example's collator does; selfsup gets ``data.batch_seconds`` length-bucketed batches
  (:class:`selfsup.train.sampler.DurationSampler`) of about the same audio per step.

    python bench/speech_throughput.py --workload equal real --steps 12 --warmup 3
    python bench/speech_throughput.py --precision bf16      # on a CPU with AVX512-BF16 / AMX, or CUDA

Results are appended to ``bench/RESULTS.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import machine

from selfsup.api import make_config
from selfsup.build import build_encoder, build_method, build_policy, fit_transform, resolve_components
from selfsup.data import load_dataset
from selfsup.data.audio import AudioDataset, audio_info
from selfsup.methods import StepInfo
from selfsup.train.sampler import DurationSampler

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_clips(max_clips: int | None) -> AudioDataset:
    """LJ Speech (385 clips) + FSDD's train split (2,700 clips), int16 at 16 kHz, in one data set."""
    parts = [
        load_dataset(str(SHARED / "speech" / "ljspeech" / "clips.tar")),
        load_dataset(f"{SHARED / 'fsdd' / 'metadata.csv'}?split=train"),
    ]
    waves, lengths = [], []
    for part in parts:
        assert isinstance(part, AudioDataset)
        for i in range(len(part)):
            start, end = int(part.offsets[i]), int(part.offsets[i + 1])
            waves.append(part.waveforms[start:end])
            lengths.append(end - start)
    order = torch.randperm(len(waves), generator=torch.Generator().manual_seed(0))
    if max_clips:
        order = order[:max_clips]
    waves = [waves[i] for i in order.tolist()]
    offsets = torch.zeros(len(waves) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(w) for w in waves]).cumsum(0)
    n = len(waves)
    return AudioDataset(
        torch.cat(waves), offsets, torch.full((n,), -1), [str(i) for i in range(n)],
        info=audio_info(16000, None), source="bench:lj+fsdd",
    )  # fmt: skip


def equal_clips(clips: int, seconds: float) -> AudioDataset:
    g = torch.Generator().manual_seed(0)
    length = round(seconds * 16000)
    waves = (torch.randn(clips * 4, length, generator=g) * 3000).round().to(torch.int16)
    offsets = torch.arange(clips * 4 + 1, dtype=torch.int64) * length
    n = clips * 4
    return AudioDataset(
        waves.reshape(-1), offsets, torch.full((n,), -1), [str(i) for i in range(n)],
        info=audio_info(16000, None), source="bench:equal",
    )  # fmt: skip


class Ours:
    name = "selfsup"

    def __init__(self, args: argparse.Namespace, data: AudioDataset, batches: list[torch.Tensor]) -> None:
        overrides = [
            "method=wav2vec2", "encoder=wav2vec2", f"encoder.num_layers={args.layers}",
            f"encoder.embed_dim={args.dim}", f"encoder.num_heads={args.heads}",
            f"encoder.ffn_dim={args.dim * 4}", f"encoder.conv_dim={args.conv_dim}",
        ]  # fmt: skip
        config = resolve_components(make_config(overrides=overrides), data.info)
        self.transform = fit_transform(config, data)
        torch.manual_seed(0)
        self.method = build_method(config, build_encoder(config, data.info))
        self.policy = build_policy(config, data.info, self.transform, self.method.encoder)
        self.optimizer = torch.optim.AdamW(self.method.parameters(), lr=1e-4)
        self.data, self.batches, self.step = data, batches, 0

    def train_step(self, index: int, dtype: torch.dtype | None) -> float:
        batch = self.data.batch(self.batches[index % len(self.batches)])
        views = self.policy(batch, torch.Generator().manual_seed(index))
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = self.method(views, StepInfo(self.step, 10_000))
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_optimizer_step(StepInfo(self.step, 10_000))
        self.step += 1
        return float(batch.lengths.sum()) / 16000  # type: ignore[union-attr]


class HuggingFace:
    name = "transformers"

    def __init__(self, args: argparse.Namespace, data: AudioDataset, batches: list[torch.Tensor]) -> None:
        from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

        config = Wav2Vec2Config(
            hidden_size=args.dim, num_hidden_layers=args.layers, num_attention_heads=args.heads,
            intermediate_size=args.dim * 4, conv_dim=(args.conv_dim,) * 7, feat_extract_norm="group",
            do_stable_layer_norm=False, mask_time_prob=0.65, mask_time_length=10, num_negatives=100,
            codevector_dim=256, proj_codevector_dim=256, num_codevector_groups=2,
            num_codevectors_per_group=320, diversity_loss_weight=0.1, layerdrop=0.0,
        )  # fmt: skip
        torch.manual_seed(0)
        self.model = Wav2Vec2ForPreTraining(config).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.data, self.batches = data, batches

    def train_step(self, index: int, dtype: torch.dtype | None) -> float:
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            _compute_mask_indices,
            _sample_negative_indices,
        )

        batch = self.data.batch(self.batches[index % len(self.batches)])
        waves = batch.inputs.float() / 32768  # type: ignore[union-attr]
        attention = (~batch.padding_mask).long()  # type: ignore[operator]
        frames = self.model._get_feat_extract_output_lengths(batch.lengths)  # type: ignore[arg-type]
        width = int(self.model._get_feat_extract_output_lengths(torch.tensor(waves.shape[1])))
        sub_attention = (torch.arange(width)[None, :] < frames[:, None]).long()
        # As the transformers pretraining example's collator: masks and negatives on the CPU, in numpy.
        mask = _compute_mask_indices((len(batch), width), 0.65, 10, attention_mask=sub_attention, min_masks=2)
        # transformers' sampler fails on an utterance with a single masked frame (short FSDD clips):
        # give such rows two masked frames (a negligible change of the workload).
        for row in np.nonzero(mask.sum(axis=1) < 2)[0]:
            mask[row, :2] = True
        negatives = _sample_negative_indices((len(batch), width), 100, mask_time_indices=mask)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = self.model(
                waves,
                attention_mask=attention,
                mask_time_indices=torch.from_numpy(mask),
                sampled_negative_indices=torch.from_numpy(negatives),
            )
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(batch.lengths.sum()) / 16000  # type: ignore[union-attr]


def measure(runner: Ours | HuggingFace, steps: int, warmup: int, dtype: torch.dtype | None) -> float:
    for i in range(warmup):
        runner.train_step(i, dtype)
    audio, start = 0.0, time.perf_counter()
    for i in range(warmup, warmup + steps):
        audio += runner.train_step(i, dtype)
    return audio / (time.perf_counter() - start)


def batches_for(args: argparse.Namespace, workload: str, data: AudioDataset) -> tuple[list, list, str]:
    """(ours, hf, description) batch lists of clip indices."""
    n = len(data)
    if workload == "equal":
        fixed = [torch.arange(i * args.clips, (i + 1) * args.clips) % n for i in range(4)]
        return fixed, fixed, f"{args.clips} clips x {args.seconds:g} s"
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(n, generator=g)
    hf = [order[i : i + args.hf_batch] for i in range(0, n - args.hf_batch + 1, args.hf_batch)]
    lengths = data.offsets[1:] - data.offsets[:-1]
    mean_audio = float(lengths.double().mean()) * args.hf_batch / 16000
    budget_s = args.batch_seconds or 2 * mean_audio  # about the padded cost HF pays, same real audio
    ours = DurationSampler(lengths, round(budget_s * 16000), seed=0).epoch_batches(0)
    padded = statistics.mean(float(lengths[b].max()) * len(b) / float(lengths[b].sum()) for b in hf)
    mine = statistics.mean(float(lengths[b].max()) * len(b) / float(lengths[b].sum()) for b in ours)
    text = (
        f"LJ Speech + FSDD train ({n} clips); HF: {args.hf_batch} random clips per batch (padded/real "
        f"{padded:.2f}); selfsup: data.batch_seconds={budget_s:.1f} (padded/real {mine:.2f})"
    )
    return ours, hf, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", default=["equal", "real"], choices=["equal", "real"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--conv-dim", type=int, default=256)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument(
        "--batch-seconds", type=float, help="selfsup's budget on real clips (default: 2x mean)"
    )
    parser.add_argument("--max-clips", type=int, help="use only this many real clips (quick check)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternate selfsup / HF this many times")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    np.random.seed(0)
    lines = []
    for workload in args.workload:
        data = equal_clips(args.clips, args.seconds) if workload == "equal" else real_clips(args.max_clips)
        ours_batches, hf_batches, text = batches_for(args, workload, data)
        runners = [Ours(args, data, ours_batches), HuggingFace(args, data, hf_batches)]
        rates: dict[str, list[float]] = {r.name: [] for r in runners}
        for _ in range(args.rounds):
            for runner in runners:
                rates[runner.name].append(measure(runner, args.steps, args.warmup, dtype))
        ours, hf = statistics.mean(rates["selfsup"]), statistics.mean(rates["transformers"])
        mine, theirs = (", ".join(f"{r:.1f}" for r in rates[k]) for k in ("selfsup", "transformers"))
        line = (
            f"| {workload} | {args.precision} | {ours:.1f} ({mine}) | {hf:.1f} ({theirs}) "
            f"| {ours / hf:.2f}x | {text} |"
        )
        print(line, flush=True)
        lines.append(line)
    if args.no_write:
        return
    command = "python bench/speech_throughput.py " + " ".join(sys.argv[1:])
    block = [
        f"\n### wav2vec 2.0 pretraining throughput vs transformers — {date.today()}\n",
        f"Machine: {machine()}. Model: conv 7 x {args.conv_dim}, {args.layers} x {args.dim} Transformer, "
        f"{args.heads} heads; mask 0.65 / 10, 100 distractors, 2 x 320 codes; AdamW. "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} alternating rounds. "
        f"Command: `{command}`\n",
        "| workload | precision | selfsup audio s/s (rounds) | transformers audio s/s (rounds) | ratio "
        "| batches |",
        "|---|---|---|---|---|---|",
        *lines,
    ]
    with RESULTS.open("a", encoding="utf-8") as handle:  # appending a log: not a file the library writes
        handle.write("\n".join(block) + "\n")


if __name__ == "__main__":
    main()
