"""Encoders for fixed-length numeric vectors (e.g. a table's numeric columns, precomputed features).

``mlp``: ``num_layers`` blocks of Linear → BatchNorm → ReLU on standardized ``(B, D)`` inputs.
``hidden_states`` = (the input itself, the output of each block), so a probe of layer 0 measures
the raw (standardized) features with the same code that probes the learned layers.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.encoders.base import ENCODERS, Encoder, EncoderOutput, numbered_layer_id

NORMS = ("batch", "layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class MLPEncoder(Encoder):
    """``(B, in_features)`` float → pooled ``(B, hidden_dim)``; ``hidden_states`` has
    ``num_layers + 1`` entries: the input ``(B, in_features)`` then each block ``(B, hidden_dim)``."""

    modality = "vector"

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"mlp: {name} must be a positive integer, got {value!r}")
        if norm not in NORMS:
            raise ValueError(f"mlp: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"mlp: dropout must be in [0, 1), got {dropout!r}")
        self.in_features = in_features
        self.embed_dim = hidden_dim
        self.num_layers = num_layers
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            # With a norm right after it, a Linear's bias would be cancelled.
            layers: list[nn.Module] = [
                nn.Linear(width, hidden_dim, bias=norm == "none"),
                _norm(norm, hidden_dim),
            ]
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = hidden_dim
        self.blocks = nn.ModuleList(blocks)

    def layer_id(self, name: str) -> int:
        """Block ``i`` is ``i + 1`` (``hidden_states[0]`` is the input itself: no parameter at 0)."""
        return numbered_layer_id(name, "blocks", self.num_layers, "mlp")

    def forward(
        self, x: Tensor, *, padding_mask: Tensor | None = None, mask: Tensor | None = None
    ) -> EncoderOutput:
        if mask is not None or padding_mask is not None:
            raise ValueError("mlp encodes whole fixed-length vectors: it takes no token or padding mask")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"mlp expects (B, {self.in_features}) vectors, got {tuple(x.shape)}")
        hidden = [x]
        h = x
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        return EncoderOutput(pooled=h, last_hidden_state=h, hidden_states=tuple(hidden))


@ENCODERS.register("mlp", modality="vector")
def mlp(
    info: DataInfo | None = None,
    in_features: int | None = None,
    hidden_dim: int = 256,
    num_layers: int = 3,
    norm: str = "batch",
    dropout: float = 0.0,
) -> MLPEncoder:
    """MLP for vectors: num_layers x (Linear-BN-ReLU); embed_dim hidden_dim (256)."""
    if in_features is None:
        if info is None or info.sample_shape is None or len(info.sample_shape) != 1:
            raise ValueError("mlp needs in_features, or the info of a vector data set")
        in_features = info.sample_shape[0]
    elif info is not None and info.sample_shape != (in_features,):
        raise ValueError(
            f"mlp: in_features={in_features} but the data has vectors of shape {info.sample_shape}"
        )
    return MLPEncoder(in_features, hidden_dim=hidden_dim, num_layers=num_layers, norm=norm, dropout=dropout)
