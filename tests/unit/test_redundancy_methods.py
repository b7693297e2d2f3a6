"""Barlow Twins, VICReg and SimSiam against their definitions: the loss of the heads' outputs, the
authors' heads, SimSiam's stop-gradient and its fixed-learning-rate predictor groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.encoders import ENCODERS
from selfsup.losses import barlow_twins, negative_cosine, vicreg, vicreg_terms
from selfsup.methods import METHODS, StepInfo, Views

STEP = StepInfo(step=0, total_steps=10)


def views(batch: int = 8, size: int = 12) -> Views:
    g = torch.Generator().manual_seed(0)
    return Views(inputs=[torch.randn(batch, 3, size, size, generator=g) for _ in range(2)])


def build(name: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return METHODS.get(name)(ENCODERS.create("small_cnn", width=4), **options)


def projections(method: nn.Module, v: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view through the encoder and projector separately (BatchNorm statistics per view)."""
    return tuple(method.projector(method.encoder(x).pooled) for x in v.inputs)  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_projector_is_the_authors(name: str) -> None:
    """barlowtwins main.py / vicreg main_vicreg.py: (Linear-BN-ReLU) x 2, then Linear(bias=False), no
    last BN; 8192-8192-8192 by default."""
    method = METHODS.get(name)(ENCODERS.create("small_cnn", width=4))
    layers = list(method.projector.layers)
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [8192, 8192, 8192]
    assert linears[0].in_features == 16  # small_cnn width 4: embed_dim 16
    assert all(m.bias is None for m in linears)
    assert all(m.affine for m in layers if isinstance(m, nn.BatchNorm1d))


@pytest.mark.parametrize(("lambda_", "scale_loss"), [(0.0051, 1.0), (0.02, 0.1)])
def test_barlow_twins_loss_is_the_loss_of_both_views_projections(lambda_: float, scale_loss: float) -> None:
    method = build("barlow_twins", hidden_dim=16, projection_dim=8, lambda_=lambda_, scale_loss=scale_loss)
    v = views()
    out = method(v, STEP)
    z1, z2 = projections(method, v)
    torch.testing.assert_close(out.loss, barlow_twins(z1, z2, lambda_=lambda_) * scale_loss)
    torch.testing.assert_close(
        out.logs["on_diagonal"] + lambda_ * out.logs["off_diagonal"], barlow_twins(z1, z2, lambda_=lambda_)
    )
    torch.testing.assert_close(out.embeddings, z1.detach())
    torch.testing.assert_close(out.features, method.encoder(v.inputs[0]).pooled.detach())


def test_barlow_twins_defaults_are_the_authors() -> None:
    params = METHODS.parameters("barlow_twins")
    assert params["lambda_"].default == 0.0051 and params["scale_loss"].default == 1.0
    assert METHODS.get("barlow_twins").default_view_policies == {"image": "byol", "vector": "vector_noise"}


def test_vicreg_loss_and_logged_terms() -> None:
    method = build("vicreg", hidden_dim=16, projection_dim=8, sim_coeff=10.0, std_coeff=20.0, cov_coeff=3.0)
    v = views()
    out = method(v, STEP)
    z1, z2 = projections(method, v)
    torch.testing.assert_close(out.loss, vicreg(z1, z2, sim_coeff=10.0, std_coeff=20.0, cov_coeff=3.0))
    terms = vicreg_terms(z1, z2)
    for key, term in zip(("invariance", "variance", "covariance"), terms):
        torch.testing.assert_close(out.logs[key], term.detach())
        assert not out.logs[key].requires_grad
    assert METHODS.get("vicreg").default_view_policies == {"image": "byol", "vector": "vector_noise"}
    params = METHODS.parameters("vicreg")
    assert (params["sim_coeff"].default, params["std_coeff"].default, params["cov_coeff"].default) == (
        25.0,
        25.0,
        1.0,
    )


def test_simsiam_heads_are_the_authors() -> None:
    """simsiam builder.py: projector (Linear-BN-ReLU) x 2, Linear, BatchNorm1d(affine=False); hidden width
    the encoder's; predictor Linear(no bias)-BN-ReLU-Linear(bias) with a 512 bottleneck."""
    method = METHODS.get("simsiam")(ENCODERS.create("small_cnn", width=4))
    kinds = [type(m) for m in method.projector.layers]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
    ]
    linears = [m for m in method.projector.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 2048)]
    assert not method.projector.layers[-1].affine
    pred = list(method.predictor.layers)
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (pred[0].in_features, pred[0].out_features, pred[3].out_features) == (2048, 512, 2048)
    assert pred[0].bias is None and pred[3].bias is not None
    assert METHODS.get("simsiam").default_view_policies == {"image": "simclr", "vector": "vector_noise"}


def test_simsiam_loss_and_stop_gradient_are_the_authors() -> None:
    """main_simsiam.py: -(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2 with z detached; the gradient is
    that of the detached formula (a target that leaked gradient would change it)."""
    method = build("simsiam", hidden_dim=16, projection_dim=8, predictor_hidden_dim=4)
    v = views()
    out = method(v, STEP)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in method.named_parameters()}
    method.zero_grad()
    z1, z2 = projections(method, v)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    cos = nn.CosineSimilarity(dim=1)
    reference = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) * 0.5
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(out.loss, negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2)
    reference.backward(retain_graph=True)
    for name, param in method.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, msg=name)
    # Without the stop-gradient the encoder's gradient is different: the check above can fail.
    method.zero_grad()
    leaked = -(cos(p1, z2).mean() + cos(p2, z1).mean()) * 0.5
    leaked.backward()
    first = next(n for n, _ in method.named_parameters() if n.startswith("encoder."))
    assert not torch.allclose(dict(method.named_parameters())[first].grad, ours[first])
    assert 0 < out.logs["z_std"].item() <= 1


def test_simsiam_fixed_predictor_lr_groups() -> None:
    method = build("simsiam", hidden_dim=16, projection_dim=8, predictor_hidden_dim=4)
    groups = method.parameter_groups(weight_decay=1e-4)
    predictor = {id(p) for p in method.predictor.parameters()}
    fixed = [g for g in groups if g.get("fixed_lr")]
    assert {id(p) for g in fixed for p in g["params"]} == predictor
    assert all(id(p) not in predictor for g in groups if not g.get("fixed_lr") for p in g["params"])
    assert {g["name"] for g in fixed} == {"predictor_decay", "predictor_no_decay"}
    by_name = {g["name"]: g for g in groups}
    assert (
        by_name["predictor_decay"]["weight_decay"] == 1e-4
        and by_name["predictor_no_decay"]["weight_decay"] == 0
    )
    # Every trainable parameter once, in named_parameters order (optimizer state lines up between runs).
    order = [id(p) for _, p in method.named_parameters()]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped, key=order.index) == order and len(set(grouped)) == len(order)
    plain = build("simsiam", hidden_dim=16, projection_dim=8, predictor_hidden_dim=4, fix_predictor_lr=False)
    assert not any(g.get("fixed_lr") for g in plain.parameter_groups(weight_decay=1e-4))


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "simsiam"])
def test_two_global_views_are_required(name: str) -> None:
    method = build(name, hidden_dim=16, projection_dim=8)
    v = views()
    with pytest.raises(ValueError, match="two global views"):
        method(Views(inputs=[v.inputs[0], v.inputs[1], v.inputs[1][:, :, :8, :8]]), STEP)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "simsiam"])
def test_vectors_work_with_an_mlp_encoder(name: str) -> None:
    torch.manual_seed(0)
    method = METHODS.get(name)(
        ENCODERS.create("mlp", in_features=5, hidden_dim=8), hidden_dim=16, projection_dim=8
    )
    g = torch.Generator().manual_seed(0)
    out = method(Views(inputs=[torch.randn(6, 5, generator=g) for _ in range(2)]), STEP)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.features.shape == (6, 8)
