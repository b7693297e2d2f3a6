"""``selfsup import-hf DIR --out RUN``: a transformers speech checkpoint as a selfsup run directory.

Every ``selfsup eval`` protocol, ``embed``, ``report`` and ``train.init_from`` then take it like a run
that selfsup pretrained. A Wav2Vec2 / HuBERT checkpoint becomes our own ``wav2vec2`` encoder (weights
renamed, :func:`selfsup.interop.hf_speech.from_hf`: no transformers needed, and it can be trained further);
other architectures (WavLM, ...) are wrapped as the frozen ``hf_speech`` upstream (needs transformers).
The input transform follows the checkpoint's ``preprocessor_config.json`` (sample rate, ``do_normalize``).
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.augment.audio_transform import AudioTransform
from selfsup.build import save_inputs
from selfsup.config import Config, dump_config
from selfsup.data.audio import audio_info
from selfsup.encoders.base import Encoder
from selfsup.errors import CheckpointError, ConfigError
from selfsup.io import save_tensors_atomic, write_text_atomic


def import_hf_run(directory: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write the run ``out`` for the checkpoint ``directory``; returns ``(out, encoder name)``."""
    from selfsup.interop.hf_speech import from_hf

    directory, out = Path(directory).expanduser(), Path(out).expanduser()
    if (out / "config.yaml").exists():
        raise ConfigError(f"{out} already holds a run; choose another --out")
    preprocessor = directory / "preprocessor_config.json"
    pre = json.loads(preprocessor.read_text(encoding="utf-8")) if preprocessor.is_file() else {}
    rate = float(pre.get("sampling_rate", 16000))
    config = Config()
    encoder: Encoder
    try:
        native = from_hf(directory)
        config.encoder.name, config.encoder.params = "wav2vec2", native.config.to_dict()
        encoder = native
    except (CheckpointError, ValueError) as native_error:  # an architecture we do not rebuild: wrap it
        from selfsup.encoders.hf_upstream import hf_speech

        try:
            encoder = hf_speech(str(directory))
        except ConfigError as error:
            raise ConfigError(f"cannot import {directory}: {native_error}; {error}") from None
        config.encoder.name, config.encoder.params = "hf_speech", {"path": str(directory.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    transform = AudioTransform(sample_rate=int(rate), normalize=bool(pre.get("do_normalize", False)))
    save_inputs(out, audio_info(int(rate), None), transform)
    weights = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_tensors_atomic(out / "encoder.safetensors", weights)
    summary = {"imported_from": str(directory.resolve()), "encoder": config.encoder.name, "steps": 0}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "config.yaml", dump_config(config))  # last: the run exists once it does
    return out, config.encoder.name


def add_import_command(commands: object) -> None:
    """The ``selfsup import-hf`` subcommand."""
    p = commands.add_parser(  # type: ignore[attr-defined]
        "import-hf", help="a local transformers Wav2Vec2 / HuBERT / WavLM checkpoint as a run directory"
    )
    p.add_argument("directory", help="folder written by save_pretrained (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.set_defaults(handler=_import_hf)


def _import_hf(args: object) -> int:
    out, name = import_hf_run(args.directory, args.out)  # type: ignore[attr-defined]
    print(f"imported {args.directory} as a {name} run in {out}")  # type: ignore[attr-defined]
    return 0


__all__ = ["add_import_command", "import_hf_run"]
