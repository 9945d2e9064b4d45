"""Baselines of the paper's comparison (Table 2), on the same data pipeline, training loop and evaluation.

Every model follows UniSRec's protocol, so ``finetune``, ``fit`` and ``evaluate`` use them unchanged:
``forward(sequences) -> (hidden (B, L, H), table (N, H'))`` with the item table computed once per step,
``item_table()``, ``encode(sequences, table)``, ``sequence_vectors(sequences, lengths, table) -> (B, H)``,
``logits(queries, table) -> (T, N)`` and ``query_vectors(q) @ scoring_table(table).T == logits(q, table)``.
They are picked by ``--mode`` (``ModelConfig.architecture``); all train with a full softmax over the items.

- ``gru4rec`` (Hidasi et al., ICLR 2016, in its full-softmax cross-entropy form): item-ID embeddings ->
  dropout -> GRU (``gru_layers`` layers of ``hidden_size``) -> linear; dot product with the ID embeddings.
- ``bert4rec`` (Sun et al., CIKM 2019): a bidirectional Transformer over item IDs trained by the cloze
  task of ``unisrec.cloze`` (each item masked with probability ``mask_prob``); at inference a [MASK] token
  is appended after the history and its state is the query. Output head as in the paper: linear -> GELU ->
  LayerNorm, dot product with the ID embeddings plus a per-item bias.
- ``fdsa`` (Zhang et al., IJCAI 2019): two causal self-attention streams, one over item-ID embeddings and
  one over item features, concatenated and projected; dot product with the ID embeddings. The features here
  are the frozen language-model vectors of the item texts through a linear layer (the paper's attribute
  embeddings and their vanilla attention collapse to this when an item has one feature vector).
- ``textknn``: the last item's nearest neighbours by the cosine of the frozen language-model vectors, the
  history's own items ranked after every other item (no parameters, no training): the text-only floor of the
  cold-item protocol.
- ``zesrec`` (ZESRec-style, after Ding et al., 2021): text-only items, v_i = MLP(x_i) (dropout -> linear ->
  GELU -> linear) of the frozen language-model vector, a SASRec-style causal Transformer over them, dot-product
  full softmax. No ID anywhere, so a model trained on one domain scores another domain's items from their text
  alone (zero-shot: ``zero_shot_model(run, target)``), or is fine-tuned there with ``--init RUN``.
  Not implemented from ZESRec: its hierarchical-Bayesian user/item offsets (they are ID based).

Defaults are the shared ModelConfig (the paper tunes every baseline at hidden size 300, 2 layers, 2 heads,
dropout 0.5 like SASRec). Tuning ranges worth searching on a new dataset (``--model.x=...``):
- all: ``train.lr`` {3e-4, 1e-3, 3e-3}; ``model.hidden_dropout`` / ``attn_dropout`` {0.1, 0.2, 0.3, 0.5};
  ``model.n_layers`` {1, 2, 3}; ``train.weight_decay`` {0, 1e-4}.
- gru4rec: ``model.gru_layers`` {1, 2}; ``model.hidden_dropout`` {0.1, 0.3, 0.5}; ``train.lr`` up to 1e-2.
- bert4rec: ``model.mask_prob`` {0.1, 0.2, 0.4, 0.6} (the BERT4Rec paper: 0.6 on Amazon Beauty, 0.2 on
  MovieLens); it needs more epochs than SASRec (raise ``train.patience`` to 20-30).
- fdsa: as SASRec; ``model.adaptor_dropout`` {0.1, 0.2, 0.5} on the text vectors.
- zesrec: ``model.adaptor_dropout`` {0.1, 0.2, 0.5}; ``train.lr`` {1e-4, 3e-4, 1e-3}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unisrec.config import ModelConfig
from unisrec.model import (
    Offsets,
    SequenceEncoder,
    SequenceModel,
    TransformerLayer,
    UniSRec,
    history_offsets,
    init_weights,
)


class Baseline(SequenceModel):
    """Shared plumbing: config, catalogue size, the frozen (N, D) text buffer, dot-product scoring."""

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__()
        self.config, self.n_items = config, n_items
        if config.uses_text:
            if text is None or text.ndim != 2 or text.shape[0] != n_items:
                shape = None if text is None else tuple(text.shape)
                raise ValueError(f"{config.architecture} needs a ({n_items}, D) text matrix, got {shape}")
            self.register_buffer("item_text", text.float().contiguous(), persistent=False)  # (N, D)

    def _texts(self, items: Tensor | None, text: Tensor | None) -> Tensor:
        """(N, D) or (M, D) language-model vectors of all items / of ``items``, unless ``text`` is given."""
        if text is not None:
            return text
        return self.item_text if items is None else self.item_text[items]

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, sequences: Tensor, items: Tensor | None = None, text: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, L) indices into the table of ``items`` (all N items when None) -> (B, L, H), table."""
        table = self.item_table(items, text)
        return self.encode(sequences, table), table

    def sequence_vectors(self, sequences: Tensor, lengths: Tensor, table: Tensor) -> Tensor:
        """(B, L), (B,) -> (B, H): the state at the last real position (causal models)."""
        hidden = self.encode(sequences, table)
        return hidden[torch.arange(len(lengths), device=hidden.device), lengths - 1]

    def logits(self, queries: Tensor, table: Tensor) -> Tensor:
        """(T, H) x (N, H) -> (T, N) dot products."""
        return queries @ table.T

    def scoring_table(self, table: Tensor) -> Tensor:
        return table

    def query_vectors(self, queries: Tensor) -> Tensor:
        return queries

    def _check_length(self, sequences: Tensor, limit: int) -> None:
        if sequences.shape[1] > limit:
            raise ValueError(f"sequence length {sequences.shape[1]} > {limit} (max_seq_len {self.config.max_seq_len})")


class GRU4Rec(Baseline):
    """Item-ID embeddings -> dropout -> GRU -> linear; full softmax over dot products."""

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__(config, n_items, text)
        h = config.hidden_size
        self.item_id = nn.Embedding(n_items, h)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        between = config.hidden_dropout if config.gru_layers > 1 else 0.0
        self.gru = nn.GRU(h, h, num_layers=config.gru_layers, batch_first=True, bias=False, dropout=between)
        self.dense = nn.Linear(h, h)
        self.apply(lambda m: init_weights(m, config.initializer_range))
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        return self.item_id.weight if items is None else self.item_id(items)  # (N, H) or (M, H)

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        """(B, L) right-padded -> (B, L, H); the GRU runs left to right, so padding never leaks back."""
        self._check_length(sequences, self.config.max_seq_len)
        states, _ = self.gru(self.input_dropout(F.embedding(sequences, table)))  # (B, L, H)
        return self.dense(states)


class BERT4Rec(Baseline):
    """Bidirectional Transformer over item IDs; tokens 0..N-1 are items, N is [MASK], N + 1 is padding.

    Sequences hold up to ``max_seq_len + 1`` tokens: a training window of max_seq_len inputs plus its next
    item (``unisrec.cloze``), or at inference a history of up to max_seq_len items plus [MASK]. ``encode``
    reads [MASK] and padding as the two tokens past the table it is given (N and N + 1 for the whole table).
    """

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__(config, n_items, text)
        h = config.hidden_size
        self.item_id = nn.Embedding(n_items, h)
        self.mask_token = nn.Parameter(torch.zeros(h))
        self.position = nn.Embedding(config.max_seq_len + 1, h)
        self.input_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layers))
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.layer_norm_eps))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        self.apply(lambda m: init_weights(m, config.initializer_range))
        nn.init.normal_(self.mask_token, std=config.initializer_range)

    @property
    def mask_index(self) -> int:
        return self.n_items

    @property
    def pad_index(self) -> int:
        return self.n_items + 1

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        if items is not None:
            raise ValueError("bert4rec scores the whole catalogue (its output bias is per item)")
        return self.item_id.weight  # (N, H)

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        """(B, L) tokens (items, [MASK], padding) -> (B, L, H); every token attends to every non-padding token."""
        self._check_length(sequences, self.config.max_seq_len + 1)
        n, h = table.shape
        vocab = torch.cat([table, self.mask_token[None], table.new_zeros(1, h)])  # (N + 2, H)
        positions = torch.arange(sequences.shape[1], device=sequences.device)
        x = self.input_dropout(self.input_norm(F.embedding(sequences, vocab) + self.position(positions)))
        attend = (sequences != n + 1)[:, None, None, :]  # (B, 1, 1, L) key-padding mask
        for layer in self.layers:
            x = layer(x, attend)
        return x  # (B, L, H)

    def sequence_vectors(self, sequences: Tensor, lengths: Tensor, table: Tensor) -> Tensor:
        """(B, L) right-padded histories, (B,) -> (B, H): the state of a [MASK] appended after each history.

        [MASK] and padding are the tokens just past ``table`` (N and N + 1 for the whole catalogue), so the
        histories may index a table of only the items they use (serving).
        """
        b, n = sequences.shape
        mask_index, pad_index = len(table), len(table) + 1
        rows = torch.arange(b, device=sequences.device)
        real = torch.arange(n, device=sequences.device)[None, :] < lengths[:, None]  # (B, L)
        tokens = torch.full((b, n + 1), pad_index, dtype=sequences.dtype, device=sequences.device)
        tokens[:, :n] = torch.where(real, sequences, pad_index)
        tokens[rows, lengths] = mask_index  # (B, L + 1)
        return self.encode(tokens, table)[rows, lengths]

    def logits(self, queries: Tensor, table: Tensor) -> Tensor:
        """(T, H) states x (N, H) items -> (T, N): head(state) . item + bias."""
        return self.head(queries) @ table.T + self.output_bias

    def scoring_table(self, table: Tensor) -> Tensor:
        return torch.cat([table, self.output_bias[:, None]], dim=1)  # (N, H + 1)

    def query_vectors(self, queries: Tensor) -> Tensor:
        projected = self.head(queries)
        return torch.cat([projected, projected.new_ones(len(projected), 1)], dim=1)  # (B, H + 1)


class FDSA(Baseline):
    """Item-ID stream + feature stream (text vectors through a linear layer), each a causal Transformer.

    The item table holds both per item, (N, 2H) = [ID embedding | projected text]; only the ID half scores.
    """

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__(config, n_items, text)
        h = config.hidden_size
        self.item_id = nn.Embedding(n_items, h)
        self.feature = nn.Sequential(nn.Dropout(config.adaptor_dropout), nn.Linear(self.text_dim, h))
        self.item_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.feature_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.item_encoder = SequenceEncoder(config)
        self.feature_encoder = SequenceEncoder(config)
        self.fuse = nn.Linear(2 * h, h)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        ids = self.item_id.weight if items is None else self.item_id(items)  # (N, H)
        return torch.cat([ids, self.feature(self._texts(items, text))], dim=-1)  # (N, 2H)

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        """(B, L) -> (B, L, H): Linear([ID stream | feature stream])."""
        self._check_length(sequences, self.config.max_seq_len)
        h = self.config.hidden_size
        both = F.embedding(sequences, table)  # (B, L, 2H)
        item_states = self.item_encoder(both[..., :h], self.item_norm, self.input_dropout)  # (B, L, H)
        feature_states = self.feature_encoder(both[..., h:], self.feature_norm, self.input_dropout)  # (B, L, H)
        return self.fuse(torch.cat([item_states, feature_states], dim=-1))

    def logits(self, queries: Tensor, table: Tensor) -> Tensor:
        return queries @ self.scoring_table(table).T

    def scoring_table(self, table: Tensor) -> Tensor:
        return table[:, : self.config.hidden_size]  # (N, H): the ID embeddings


class ZESRec(Baseline):
    """Text-only items v = MLP(x), SASRec's causal Transformer over them, dot-product softmax; no IDs."""

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__(config, n_items, text)
        h = config.hidden_size
        self.mlp = nn.Sequential(
            nn.Dropout(config.adaptor_dropout), nn.Linear(self.text_dim, h), nn.GELU(), nn.Linear(h, h)
        )
        self.input_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.encoder = SequenceEncoder(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        return self.mlp(self._texts(items, text))  # (N, H) or (M, H)

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        self._check_length(sequences, self.config.max_seq_len)
        return self.encoder(F.embedding(sequences, table), self.input_norm, self.input_dropout)  # (B, L, H)


# what TextKNN adds to the score of each item its history holds: cosines lie in [-1, 1], so -3 ranks every one of
# them after every item outside the history
HISTORY_OFFSET = -3.0


class TextKNN(Baseline):
    """Text-only nearest neighbours of the last item: score(i) = cos(x_last, x_i) of the language-model vectors,
    minus 3 for the items of the history's window, its last max_seq_len (so they rank after every other item, and
    the last item does not rank itself first: a nearest-neighbour recommender does not recommend what its query
    holds).

    No parameters and no training (``finetune`` evaluates it as is): the floor any text model must beat,
    above all on cold items, which it scores exactly like warm ones. On Scientific (test NDCG@10, full ranking,
    seen items kept in the ranking as the paper's protocol) the history's items at the bottom lift it from
    0.0479 to 0.0667 (README "Baselines").
    """

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        return F.normalize(self._texts(items, text), dim=-1)  # (N, D) or (M, D) unit vectors

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        self._check_length(sequences, self.config.max_seq_len)
        return F.embedding(sequences, table)  # (B, L, D): each position's state is its item's vector

    def repeat_offsets(self, history: Tensor, lengths: Tensor) -> Offsets | None:
        weight = torch.tensor([0.0, HISTORY_OFFSET], device=history.device)  # [w_last, w_hist]
        return history_offsets(weight, history, lengths)

    @property
    def has_repeat_offsets(self) -> bool:
        return True


BASELINES: dict[str, type[Baseline]] = {
    "gru4rec": GRU4Rec, "bert4rec": BERT4Rec, "fdsa": FDSA, "zesrec": ZESRec, "textknn": TextKNN,
}


def build_model(config: ModelConfig, n_items: int, text: Tensor | None = None) -> UniSRec | Baseline:
    """The network of ``config.architecture`` (UniSRec, which is SASRec for item_repr=id, or a baseline)."""
    if config.architecture == "unisrec":
        return UniSRec(config, n_items, text)
    return BASELINES[config.architecture](config, n_items, text)
