"""Several sources joined with " + " load as one data set (selfsup.data.concat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from selfsup.data import load_dataset
from selfsup.data.audio import AudioDataset
from selfsup.data.concat import split_spec
from selfsup.errors import DataError


def _clips(folder: Path, names: list[str], seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = (rng.standard_normal(int(16000 * seconds)) * 3000).astype(np.int16)
        soundfile.write(path, samples, 16000, subtype="PCM_16")


def test_split_spec_needs_spaces_around_the_plus() -> None:
    assert split_spec("a.tar + b.csv?split=train") == ["a.tar", "b.csv?split=train"]
    assert split_spec("odd+name.tar") == ["odd+name.tar"]


def test_audio_parts_join_in_order_with_labels_of_the_labelled_part(tmp_path: Path) -> None:
    _clips(tmp_path / "pool", ["a.wav", "b.wav", "c.wav"], 0.5, seed=0)
    _clips(tmp_path / "labelled", ["x/1.wav", "y/2.wav"], 0.3, seed=1)
    pool, labelled = load_dataset(str(tmp_path / "pool")), load_dataset(str(tmp_path / "labelled"))
    joined = load_dataset(f"{tmp_path / 'pool'} + {tmp_path / 'labelled'}")
    assert isinstance(joined, AudioDataset) and len(joined) == 5
    assert joined.info.classes == ("x", "y")
    assert joined.labels.tolist() == [-1, -1, -1, 0, 1]
    # Every clip is the one its part holds, bit for bit.
    for i, (part, j) in enumerate([(pool, 0), (pool, 1), (pool, 2), (labelled, 0), (labelled, 1)]):
        mine, theirs = joined.batch(torch.tensor([i])), part.batch(torch.tensor([j]))
        assert torch.equal(mine.inputs, theirs.inputs)
    assert len(set(joined.ids)) == 5
    assert joined.fingerprint != pool.fingerprint
    assert len(load_dataset(f"{tmp_path / 'pool'} + {tmp_path / 'labelled'}", max_samples=4)) == 4


def test_parts_of_different_formats_or_classes_are_refused(tmp_path: Path) -> None:
    _clips(tmp_path / "one", ["p/a.wav", "q/b.wav"], 0.3, seed=0)
    _clips(tmp_path / "two", ["r/a.wav", "s/b.wav"], 0.3, seed=1)
    with pytest.raises(DataError, match="different classes"):
        load_dataset(f"{tmp_path / 'one'} + {tmp_path / 'two'}")
    np.save(tmp_path / "v.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(DataError, match="differ"):
        load_dataset(f"{tmp_path / 'one'} + {tmp_path / 'v.npy'}")
    np.save(tmp_path / "w.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(DataError, match="sample_shape"):
        load_dataset(f"{tmp_path / 'v.npy'} + {tmp_path / 'w.npy'}")
    assert len(load_dataset(f"{tmp_path / 'v.npy'} + {tmp_path / 'v.npy'}")) == 8
