"""Interop with transformers' Wav2Vec2Model / HubertModel (the reference implementation): import a tiny
random transformers model saved in the test and compare every hidden state; export ours and load it
with ``from_pretrained``; both weight-norm key layouts; checkpoints with heads; refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from selfsup.encoders.audio import Wav2Vec2Encoder, wav2vec2
from selfsup.errors import CheckpointError, ConfigError
from selfsup.interop.hf_speech import from_hf, from_hf_state_dict, hf_config, to_hf, to_hf_state_dict

transformers = pytest.importorskip("transformers")

# (transformers model, feat_extract_norm, do_stable_layer_norm, conv_bias)
VARIANTS = [
    ("wav2vec2", "group", False, False),  # wav2vec 2.0 Base layout
    ("wav2vec2", "layer", True, True),  # Large-lv60 / "stable" layout
    ("hubert", "group", False, False),  # HuBERT Base
    ("hubert", "layer", True, False),  # HuBERT Large
]
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}


def hf_model(model: str, norm: str, stable: bool, conv_bias: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls_config = transformers.Wav2Vec2Config if model == "wav2vec2" else transformers.HubertConfig
    config = cls_config(**TINY, feat_extract_norm=norm, do_stable_layer_norm=stable, conv_bias=conv_bias)
    cls = transformers.Wav2Vec2Model if model == "wav2vec2" else transformers.HubertModel
    net = cls(config).eval()
    with torch.no_grad():  # transformers initialises norms to (1, 0): move them so that placement matters
        for name, p in net.named_parameters():
            if "norm" in name or name.endswith("conv.bias"):
                p.add_(0.2 * torch.randn_like(p))
    return net


def hf_hidden_states(net: torch.nn.Module, x: Tensor) -> list[Tensor]:
    """transformers' hidden states with the last entry its (normalized) last_hidden_state."""
    with torch.no_grad():
        out = net(x, output_hidden_states=True)
    states = list(out.hidden_states)
    assert len(states) == net.config.num_hidden_layers + 1
    # transformers 5: for stable-layer-norm models hidden_states[-1] is the last block's output before the
    # encoder's final LayerNorm; our last entry (and transformers 4.x's) is the normalized one.
    states[-1] = out.last_hidden_state
    return states


def assert_same_hidden_states(ours: Wav2Vec2Encoder, net: torch.nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        mine = ours(x).hidden_states
    theirs = hf_hidden_states(net, x)
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=f"hidden state {i}")


@pytest.mark.parametrize(("model", "norm", "stable", "conv_bias"), VARIANTS)
def test_import_reproduces_transformers(
    model: str, norm: str, stable: bool, conv_bias: bool, tmp_path: Path
) -> None:
    net = hf_model(model, norm, stable, conv_bias)
    net.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    assert (ours.config.conv_norm, ours.config.layer_norm_first, ours.config.conv_bias) == (
        norm,
        stable,
        conv_bias,
    )
    assert ours.num_layers == 2 and ours.embed_dim == 32 and ours.conv_dim == 16
    x = torch.randn(2, 3200, generator=torch.Generator().manual_seed(1))
    assert_same_hidden_states(ours, net, x)
    torch.testing.assert_close(ours.mask_embedding, net.masked_spec_embed)


@pytest.mark.parametrize(("model", "norm", "stable", "conv_bias"), VARIANTS)
def test_export_loads_in_transformers(
    model: str, norm: str, stable: bool, conv_bias: bool, tmp_path: Path
) -> None:
    torch.manual_seed(2)
    ours = wav2vec2(
        embed_dim=32,
        num_heads=4,
        ffn_dim=48,
        conv_dim=16,
        num_layers=2,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        conv_norm=norm,
        layer_norm_first=stable,
        conv_bias=conv_bias,
    ).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    config, state = to_hf(ours, model)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    cls = transformers.Wav2Vec2Model if model == "wav2vec2" else transformers.HubertModel
    net, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched key
    assert type(net.config).__name__ == ("Wav2Vec2Config" if model == "wav2vec2" else "HubertConfig")
    x = torch.randn(3, 2000, generator=torch.Generator().manual_seed(3))
    assert_same_hidden_states(ours, net.eval(), x)


def test_ffn_outputs_are_transformers_feed_forward_outputs(tmp_path: Path) -> None:
    """data2vec's target layer: each block's FFN output before the residual (transformers' feed_forward)."""
    net = hf_model("wav2vec2", "group", False, False)
    net.save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    captured: list[Tensor] = []
    for layer in net.encoder.layers:
        layer.feed_forward.register_forward_hook(lambda m, i, o: captured.append(o))
    x = torch.randn(1, 2400)
    with torch.no_grad():
        extract_features = net(x).extract_features
        local = ours.local_features(x)
        ffn = ours.contextualize(local.projected).ffn_outputs
    # the quantizer input: transformers' extract_features (the feature projection's LayerNorm output)
    torch.testing.assert_close(local.features, extract_features, atol=1e-5, rtol=1e-4)
    for a, b in zip(ffn, captured, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_old_weight_norm_names_and_head_prefixes_load() -> None:
    net = hf_model("wav2vec2", "group", False, False)
    state = {f"wav2vec2.{k}": v for k, v in net.state_dict().items()}
    g = state.pop("wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0")
    v = state.pop("wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    state["wav2vec2.encoder.pos_conv_embed.conv.weight_g"] = g
    state["wav2vec2.encoder.pos_conv_embed.conv.weight_v"] = v
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)  # a ForPreTraining head: ignored
    state["project_q.weight"] = torch.zeros(8, 8)
    ours = from_hf((net.config.to_dict(), state))
    assert_same_hidden_states(ours, net, torch.randn(1, 1600))


def test_renaming_is_a_bijection_on_every_key() -> None:
    ours = wav2vec2(size="tiny", conv_norm="layer", conv_bias=True, layer_norm_first=True)
    state = ours.state_dict()
    hf = to_hf_state_dict(state)
    assert len(hf) == len(state)
    back = from_hf_state_dict(hf)
    assert list(back) == list(state)
    reference = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**hf_config(ours.config)))
    assert set(hf) == set(reference.state_dict())
    assert all(hf[k].shape == reference.state_dict()[k].shape for k in hf)


def test_base_parameter_count_equals_transformers_wav2vec2_base() -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours = sum(p.numel() for p in wav2vec2(size="base").parameters())
        theirs = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())  # defaults = wav2vec2-base
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_unsupported_configs_are_refused_with_the_reason() -> None:
    config = transformers.Wav2Vec2Config(**TINY).to_dict()
    with pytest.raises(ConfigError, match="hidden_act='relu'"):
        from_hf(({**config, "hidden_act": "relu"}, {}))
    with pytest.raises(ConfigError, match="model_type 'wavlm'.*hf_speech"):
        from_hf(({**config, "model_type": "wavlm"}, {}))
    with pytest.raises(ConfigError, match="feat_proj_layer_norm"):
        from_hf(({**transformers.HubertConfig(**TINY).to_dict(), "feat_proj_layer_norm": False}, {}))
    with pytest.raises(CheckpointError, match="do not fit"):
        from_hf((config, {}))
    with pytest.raises(ConfigError, match="hf model must be one of"):
        hf_config(wav2vec2().config, "wavlm")


def test_directories_without_safetensors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(transformers.Wav2Vec2Config(**TINY).to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="safetensors only"):
        from_hf(tmp_path)


# --- selfsup export --format hf ------------------------------------------------------------------------


class StandInTransform:
    """The part of the (data helper's) AudioTransform that the export reads."""

    modality = "audio"
    normalize = True
    sample_rate = 16000

    def to_dict(self) -> dict[str, object]:
        return {"kind": "audio", "normalize": True, "sample_rate": 16000}


def stand_in_run(encoder: torch.nn.Module, tmp_path: Path) -> object:
    """A loaded run (selfsup.load's Pretrained) around ``encoder``: what export_model reads of one."""
    from types import SimpleNamespace

    from selfsup.config import Config
    from selfsup.data.base import DataInfo

    config = Config()
    config.encoder.name, config.encoder.params = "wav2vec2", {"size": "tiny"}
    config.method.name, config.data.source = "wav2vec2", "tiny:audio"
    info = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=16000.0)
    return SimpleNamespace(
        run_dir=tmp_path / "run", config=config, encoder=encoder, info=info, transform=StandInTransform()
    )


@pytest.mark.parametrize("hf_model", ["wav2vec2", "hubert"])
def test_hf_export_loads_in_transformers_and_is_verified(hf_model: str, tmp_path: Path) -> None:
    from selfsup.export import export_model

    torch.manual_seed(4)
    ours = wav2vec2(
        embed_dim=32,
        num_heads=4,
        ffn_dim=48,
        conv_dim=16,
        num_layers=2,
        pos_conv_kernel=16,
        pos_conv_groups=4,
    ).eval()
    out = export_model(stand_in_run(ours, tmp_path), "hf", tmp_path / "hf", hf_model=hf_model)  # type: ignore[arg-type]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["verified_with_transformers"] == transformers.__version__
    assert manifest["hf_model"] == hf_model and str(out) in manifest["usage"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == hf_model
    assert config["architectures"] == [{"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}[hf_model]]
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == 16000 and pre["do_normalize"] is True
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(out))
    assert extractor.sampling_rate == 16000
    cls = getattr(transformers, config["architectures"][0])
    net = cls.from_pretrained(str(out), local_files_only=True).eval()
    assert_same_hidden_states(ours, net, torch.randn(2, 2400))


def test_hf_export_refuses_other_encoders_and_unknown_models(tmp_path: Path) -> None:
    from selfsup.encoders.vector import mlp
    from selfsup.export import export_model

    with pytest.raises(ConfigError, match="no transformers architecture"):
        export_model(stand_in_run(mlp(in_features=4), tmp_path), "hf", tmp_path / "a")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hf_model must be one of"):
        export_model(stand_in_run(wav2vec2(), tmp_path), "hf", tmp_path / "b", hf_model="wavlm")  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- encoder hf_speech: a transformers checkpoint as the upstream ---------------------------------------


def saved_upstream(kind: str, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny random WavLM (group norm, post-LN) or HuBERT (layer norm, stable) saved in ``tmp_path``."""
    torch.manual_seed(5)
    if kind == "wavlm":
        config = transformers.WavLMConfig(**TINY, num_buckets=16, max_bucket_distance=40)
        net = transformers.WavLMModel(config)
    else:
        config = transformers.HubertConfig(**TINY, feat_extract_norm="layer", do_stable_layer_norm=True)
        net = transformers.HubertModel(config)
    net.eval().save_pretrained(tmp_path / kind)
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=kind == "hubert")
    extractor.save_pretrained(tmp_path / kind)
    return tmp_path / kind, net


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])
def test_hf_speech_upstream_honours_the_encoder_contract(kind: str, tmp_path: Path) -> None:
    from selfsup.encoders import ENCODERS

    path, net = saved_upstream(kind, tmp_path)
    encoder = ENCODERS.create("hf_speech", path=str(path)).eval()
    assert encoder.modality == "audio" and encoder.mask_mode == "none"
    assert (encoder.embed_dim, encoder.num_layers, encoder.frame_rate) == (32, 2, 50.0)
    assert encoder.do_normalize is (kind == "hubert")
    lengths = torch.tensor([400, 2400, 5000])
    torch.testing.assert_close(encoder.output_lengths(lengths), net._get_feat_extract_output_lengths(lengths))
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = encoder(x)
        reference = hf_hidden_states(net, x)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1] is out.last_hidden_state
    for a, b in zip(out.hidden_states, reference, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out.pooled, reference[-1].mean(1))
    # Pad a batch, compare: valid frames and pooled outputs as for each clip alone.
    clip_lengths = [5000, 2400, 3700]
    padding = torch.arange(5000).unsqueeze(0) >= torch.tensor(clip_lengths).unsqueeze(1)
    padded = x.masked_fill(padding, 0.0)
    with torch.no_grad():
        batched = encoder(padded, padding_mask=padding)
        frames = encoder.output_lengths(torch.tensor(clip_lengths))
        assert batched.padding_mask is not None
        assert (~batched.padding_mask).sum(1).tolist() == frames.tolist()
        for b, n in enumerate(clip_lengths):
            alone = encoder(x[b : b + 1, :n])
            for h_batch, h_alone in zip(batched.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(h_batch[b, : int(frames[b])], h_alone[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(batched.pooled[b], alone.pooled[0], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot mask"):
        encoder(x, mask=torch.zeros(3, 15, dtype=torch.bool))


def test_hf_speech_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from selfsup.data.base import DataInfo
    from selfsup.encoders.hf_upstream import hf_speech

    with pytest.raises(ConfigError, match="no config.json"):
        hf_speech(path=str(tmp_path))
    path, _ = saved_upstream("hubert", tmp_path)
    info = DataInfo(modality="audio", sample_shape=None, dtype="int16", sample_rate=8000.0)
    with pytest.raises(ConfigError, match="expects 16000 Hz audio but the data is at 8000 Hz"):
        hf_speech(path=str(path), info=info)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[hf\]'"):
        hf_speech(path=str(path))


def test_hf_export_that_transformers_disagrees_with_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import selfsup.export.hf as hf_export
    from selfsup.export import ExportError, export_model

    real = hf_export.to_hf

    def perturbed(encoder: Wav2Vec2Encoder, model: str = "wav2vec2") -> tuple[dict, dict]:
        config, state = real(encoder, model)
        # (a bias shift before a LayerNorm would cancel: scale a weight instead)
        key = "encoder.layers.1.feed_forward.output_dense.weight"
        return config, {**state, key: state[key] * 1.5}

    monkeypatch.setattr(hf_export, "to_hf", perturbed)
    ours = wav2vec2(
        embed_dim=32,
        num_heads=4,
        ffn_dim=48,
        conv_dim=16,
        num_layers=2,
        pos_conv_kernel=16,
        pos_conv_groups=4,
    )
    with pytest.raises(ExportError, match="disagrees with the encoder at hidden state 2"):
        export_model(stand_in_run(ours, tmp_path), "hf", tmp_path / "hf")  # type: ignore[arg-type]
    assert not (tmp_path / "hf").exists()
