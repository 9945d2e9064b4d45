"""The model on tiny configurations: adaptor gates, padding invariance, freeze policies, shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unisrec.config import ConfigError, ModelConfig, TrainConfig
from unisrec.model import MoEAdaptor, UniSRec
from unisrec.train import set_trainable

TINY = ModelConfig(hidden_size=16, n_layers=2, n_heads=2, inner_size=24, max_seq_len=8, n_experts=3)


def tiny_model(item_repr: str = "text", n_items: int = 12, text_dim: int = 10, **kw: object) -> UniSRec:
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY.__dict__, "item_repr": item_repr, **kw})
    text = torch.randn(n_items, text_dim) if item_repr != "id" else None
    return UniSRec(config, n_items, text)


def test_gates_sum_to_one_and_start_uniform() -> None:
    adaptor = MoEAdaptor(10, 6, 4, dropout=0.0)
    x = torch.randn(7, 10)
    adaptor.eval()
    gates = adaptor.gates(x)
    assert gates.shape == (7, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(7))
    torch.testing.assert_close(gates, torch.full((7, 4), 0.25))  # zero-initialised W2, W3
    assert adaptor.gate_noise is not None
    with torch.no_grad():
        adaptor.gate.normal_()
        adaptor.gate_noise.normal_()
    adaptor.train()
    noisy = adaptor.gates(x)
    torch.testing.assert_close(noisy.sum(-1), torch.ones(7))
    assert not torch.allclose(noisy, adaptor.eval().gates(x))  # noise only while training


def test_adaptor_equals_explicit_expert_sum() -> None:
    torch.manual_seed(1)
    adaptor = MoEAdaptor(5, 3, 2, dropout=0.0).eval()
    assert adaptor.bias is not None
    with torch.no_grad():
        adaptor.bias.normal_()
        adaptor.gate.normal_()
    x = torch.randn(4, 5)
    gates = torch.softmax(x @ adaptor.gate, dim=-1)
    expected = sum(gates[:, k : k + 1] * ((x - adaptor.bias[k]) @ adaptor.weight[k]) for k in range(2))
    torch.testing.assert_close(adaptor(x), expected)


def test_no_whitening_has_no_bias_and_one_expert_is_linear() -> None:
    adaptor = MoEAdaptor(5, 3, 1, dropout=0.0, whitening=False, noisy=False).eval()
    assert adaptor.bias is None and adaptor.gate_noise is None
    x = torch.randn(4, 5)
    torch.testing.assert_close(adaptor(x), x @ adaptor.weight[0])


@pytest.mark.parametrize("item_repr", ["text", "text+id", "id"])
def test_padding_does_not_change_outputs(item_repr: str) -> None:
    model = tiny_model(item_repr).eval()
    table = model.item_table()
    seq = torch.tensor([[3, 1, 4, 1]])
    short = model.sequence_vectors(seq, torch.tensor([4]), table)
    padded_a = torch.tensor([[3, 1, 4, 1, 0, 0, 0]])
    padded_b = torch.tensor([[3, 1, 4, 1, 9, 5, 2]])
    for padded in (padded_a, padded_b):
        out = model.sequence_vectors(padded, torch.tensor([4]), table)
        torch.testing.assert_close(out, short)
    hidden = model.encode(padded_b, table)
    torch.testing.assert_close(hidden[:, :4], model.encode(seq, table))


def test_causal_position_ignores_future_items() -> None:
    model = tiny_model().eval()
    table = model.item_table()
    a = model.encode(torch.tensor([[1, 2, 3, 4]]), table)
    b = model.encode(torch.tensor([[1, 2, 7, 8]]), table)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_shapes_and_logits() -> None:
    model = tiny_model("text+id").eval()
    hidden, table = model(torch.randint(0, 12, (5, 6)))
    assert hidden.shape == (5, 6, 16) and table.shape == (12, 16)
    logits = model.logits(hidden[:, -1], table)
    assert logits.shape == (5, 12)
    assert logits.abs().max() <= 1 / model.config.temperature + 1e-4  # cosine / temperature
    scores = model.query_vectors(hidden[:, -1]) @ model.scoring_table(table).T
    torch.testing.assert_close(scores, logits)
    _hidden, sub_table = model(torch.tensor([[0, 1]]), items=torch.tensor([4, 7]))
    torch.testing.assert_close(sub_table, table[[4, 7]])


@pytest.mark.parametrize("item_repr", ["text", "text+id", "id"])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("skip", ["none", "add", "gate"])
def test_packed_sequence_vectors_equal_padded(item_repr: str, n_layers: int, skip: str) -> None:
    """Histories laid end to end (serving) get the states of the padded batch, the last layer at ends only."""
    model = tiny_model(item_repr, n_layers=n_layers, last_item_skip=skip != "none", skip_gate=skip == "gate").eval()
    table = model.item_table()  # (N, H)
    lengths = torch.tensor([4, 1, 8, 2, 5])
    padded = torch.randint(0, 12, (5, 8))  # (B, L): entries past each length are padding
    packed = torch.cat([padded[b, :n] for b, n in enumerate(lengths.tolist())])  # (T,)
    with torch.no_grad():
        expected = model.sequence_vectors(padded, lengths, table)  # (B, H)
        got = model.packed_sequence_vectors(packed, lengths, table)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len 8"):
        model.packed_sequence_vectors(torch.zeros(9, dtype=torch.long), torch.tensor([9]), table)


def test_layer_forward_at_equals_forward() -> None:
    model = tiny_model().eval()
    layer = model.encoder.layers[1]
    x = torch.randn(3, 6, 16)  # (B, L, H)
    at = torch.tensor([[5, 0], [2, 3], [1, 1]])  # (B, Q)
    causal = torch.arange(6)[None, None, :] <= at[:, :, None]  # (B, Q, L)
    with torch.no_grad():
        full = layer(x)  # (B, L, H)
        got = layer.forward_at(x, at, causal)  # type: ignore[operator]  # (B, Q, H)
    torch.testing.assert_close(got, full.gather(1, at[:, :, None].expand(3, 2, 16)), rtol=1e-5, atol=1e-5)


def test_too_long_sequence_is_an_error() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len 8"):
        model.encode(torch.zeros(1, 9, dtype=torch.long), model.item_table())


def test_text_modes_need_a_matching_text_matrix() -> None:
    with pytest.raises(ValueError, match=r"needs a \(12, D\) text matrix, got \(11, 10\)"):
        UniSRec(TINY, 12, torch.randn(11, 10))


ENCODER = {
    "encoder.position.weight",
    *{
        f"encoder.layers.{i}.{part}.{kind}"
        for i in range(2)
        for part in ("out", "norm1", "ff1", "ff2", "norm2")
        for kind in ("weight", "bias")
    },
    *{f"encoder.layers.{i}.{name}" for i in range(2) for name in ("qkv.weight", "q_bias", "v_bias")},
}
ADAPTOR = {"adaptor.weight", "adaptor.bias", "adaptor.gate", "adaptor.gate_noise"}
INPUT_NORM = {"input_norm.weight", "input_norm.bias"}


@pytest.mark.parametrize(
    ("item_repr", "frozen", "expected"),
    [
        ("text", True, ADAPTOR | INPUT_NORM),
        ("text+id", True, ADAPTOR | INPUT_NORM | {"item_id.weight"}),
        ("text", False, ADAPTOR | INPUT_NORM | ENCODER),
        ("text+id", False, ADAPTOR | INPUT_NORM | ENCODER | {"item_id.weight"}),
        ("id", False, INPUT_NORM | ENCODER | {"item_id.weight"}),
    ],
)
def test_trainable_parameter_names(item_repr: str, frozen: bool, expected: set[str]) -> None:
    model = tiny_model(item_repr)
    names = set_trainable(model, TrainConfig(), freeze_encoder=frozen)
    assert set(names) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_text_buffer_is_not_a_parameter_and_moves_with_the_model() -> None:
    model = tiny_model()
    assert "item_text" not in dict(model.named_parameters())
    assert "item_text" not in model.state_dict()
    assert model.item_text.dtype == torch.float32 and model.text_dim == 10


def test_skip_gate_mixes_unit_state_and_unit_item_by_a_learned_weight() -> None:
    plain, gated = tiny_model().eval(), tiny_model(last_item_skip=True, skip_gate=True).eval()
    gated.load_state_dict({**plain.state_dict(), "skip_weight": torch.tensor(0.3)})
    sequences = torch.tensor([[3, 7, 1, 0], [5, 2, 0, 0]])  # (B, L)
    with torch.no_grad():
        table = plain.item_table()
        hidden, items = plain.encode(sequences, table), table[sequences]  # (B, L, H)
        weight = math.log1p(math.exp(0.3))  # softplus
        expected = hidden / hidden.norm(dim=-1, keepdim=True) + weight * items / items.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(gated.encode(sequences, table), expected)
    fresh_weight = tiny_model(last_item_skip=True, skip_gate=True).skip_weight
    assert fresh_weight is not None
    assert float(F.softplus(fresh_weight).detach()) == pytest.approx(1.0)
    loss = gated.train().encode(sequences, gated.item_table()).sum()
    loss.backward()
    assert gated.skip_weight is not None and gated.skip_weight.grad is not None  # it learns
    with pytest.raises(ConfigError, match=r"needs model\.last_item_skip=true"):
        ModelConfig(skip_gate=True)


def test_last_item_skip_adds_each_positions_own_item_vector() -> None:
    plain, skip = tiny_model().eval(), tiny_model(last_item_skip=True).eval()
    skip.load_state_dict(plain.state_dict())  # same weights: the flag adds no parameter
    sequences = torch.tensor([[3, 7, 1, 0], [5, 2, 0, 0]])  # (B, L)
    with torch.no_grad():
        table = plain.item_table()
        expected = plain.encode(sequences, table) + table[sequences]  # (B, L, H)
        torch.testing.assert_close(skip.encode(sequences, table), expected)
