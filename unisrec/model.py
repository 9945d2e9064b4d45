"""UniSRec: text item vectors -> whitening MoE adaptor -> causal Transformer sequence encoder.

One file, the whole model (paper sections 1-3). Shapes: B batch, L sequence length, N items, D language-model
dimension, H hidden size, K experts. Item tables are computed once per step / evaluation pass
(``item_table``) and indexed by the encoder, so no (B, L, D) tensor is ever built from the data loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unisrec.config import ModelConfig
from unisrec.growing_rows import append_rows, holds


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) linear and embedding weights, zero biases, unit LayerNorms (as UniSRec)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# -- repeat offsets (model.repeat_bias) ----------------------------------------------------------------------
# Learned logits for the items a history already holds.
#
# A cosine model scores the next item by its likeness to the history, and the item most like the history is
# usually the one just consumed, so under the paper's protocol (history not masked) it takes a top slot that a
# new item should have. Two learned scalars, starting at 0, say how a domain treats repeats:
# ``logit(i) += w_last * [i is the last item] + w_hist * [i is in the history]``, over the model's input window
# (the last ``max_seq_len`` items), the same in training (every prefix), evaluation and serving.
#
# Offsets are sparse: (rows, items, values) triples added to a (Q, N) logit matrix, never a dense (Q, N) mask.

Offsets = tuple[Tensor, Tensor, Tensor]  # (S,) query rows, (S,) items, (S,) values


def history_offsets(weight: Tensor, history: Tensor, lengths: Tensor) -> Offsets:
    """(2,) weights [w_last, w_hist], (Q, L) right-padded histories of item indices, (Q,) lengths >= 1 ->
    the offsets of each history: w_hist once per distinct item of its first ``lengths`` entries, w_last on
    its last item."""
    q, width = history.shape
    device = history.device
    position = torch.arange(width, device=device)
    real = position[None, :] < lengths[:, None]  # (Q, L)
    before = position[:, None] > position[None, :]  # (L, L): column j' is earlier than row j
    repeated = ((history[:, :, None] == history[:, None, :]) & before[None] & real[:, None, :]).any(-1)  # (Q, L)
    first = real & ~repeated  # (Q, L): first occurrence of each distinct item
    hist_rows, hist_cols = first.nonzero(as_tuple=True)  # (S_h,), (S_h,)
    every = torch.arange(q, device=device)  # (Q,)
    rows = torch.cat([hist_rows, every])
    items = torch.cat([history[hist_rows, hist_cols], history[every, lengths - 1]])
    values = torch.cat([weight[1].expand(len(hist_rows)), weight[0].expand(q)])
    return rows, items, values


def add_offsets(logits: Tensor, offsets: Offsets, lo: int = 0) -> Tensor:
    """(Q, C) logits of items lo..lo+C-1 plus the offsets that fall among them (a new tensor; differentiable)."""
    rows, items, values = offsets
    inside = (items >= lo) & (items < lo + logits.shape[1])
    return logits.index_put((rows[inside], items[inside] - lo), values[inside].to(logits.dtype), accumulate=True)


class MoEAdaptor(nn.Module):
    """Parametric whitening experts mixed by a softmax gate: v = sum_k g_k (x - b_k) W_k.

    Gate logits x W2 (+ eps * softplus(x W3) with eps ~ N(0, 1) while training, if ``noisy``), W2 and W3
    start at zero, so the experts start equally weighted. One dropout mask on x is shared by the experts,
    which lets the K projections run as one (D, K*H) matmul.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_experts: int,
        *,
        dropout: float,
        whitening: bool = True,
        noisy: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.n_experts, self.d_out, self.noisy = n_experts, d_out, noisy
        self.weight = nn.Parameter(torch.randn(n_experts, d_in, d_out) * init_std)  # (K, D, H)
        self.bias = nn.Parameter(torch.zeros(n_experts, d_in)) if whitening else None  # (K, D)
        self.gate = nn.Parameter(torch.zeros(d_in, n_experts))  # W2 (D, K)
        self.gate_noise = nn.Parameter(torch.zeros(d_in, n_experts)) if noisy else None  # W3 (D, K)
        self.dropout = nn.Dropout(dropout)

    def gates(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., K) expert weights summing to one."""
        logits = x @ self.gate
        if self.training and self.gate_noise is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(x @ self.gate_noise)
        return logits.softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., H)."""
        gates = self.gates(x)  # (..., K)
        d_in = x.shape[-1]
        projected = self.dropout(x) @ self.weight.permute(1, 0, 2).reshape(d_in, -1)  # (..., K*H)
        projected = projected.unflatten(-1, (self.n_experts, self.d_out))  # (..., K, H)
        if self.bias is not None:
            projected = projected - torch.einsum("kd,kdh->kh", self.bias, self.weight)  # (x - b_k) W_k
        return (gates.unsqueeze(-2) @ projected).squeeze(-2)  # (..., H)


class TransformerLayer(nn.Module):
    """Post-LayerNorm Transformer layer (as SASRec / the reference) on scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.n_heads, self.attn_dropout = config.n_heads, config.attn_dropout
        # No key bias: it adds a per-query constant to the attention logits, which the softmax cancels, so
        # its gradient is exactly zero and Adam would only amplify rounding noise in it.
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(h))
        self.v_bias = nn.Parameter(torch.zeros(h))
        self.out = nn.Linear(h, h)
        self.norm1 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ff1 = nn.Linear(h, config.inner_size)
        self.ff2 = nn.Linear(config.inner_size, h)
        self.norm2 = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, L, H) -> (B, L, H); position t attends to positions <= t only.

        ``attn_mask`` (boolean, broadcastable to (B, heads, L, L), True = may attend) replaces the causal
        mask (bidirectional models such as BERT4Rec pass their key-padding mask).
        """
        b, n, h = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])  # (3H,)
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, L, 3H)
        q, k, v = qkv.view(b, n, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, nh, L, hd)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, nh, L, hd)
        attn = attn.transpose(1, 2).reshape(b, n, h)  # (B, L, H)
        return self._feed_forward(self.norm1(x + self.dropout(self.out(attn))))

    def forward_at(self, x: Tensor, at: Tensor, may_attend: Tensor) -> Tensor:
        """(B, L, H) inputs, (B, Q) positions, (B, Q, L) boolean mask -> (B, Q, H): outputs at ``at`` only.

        The same as ``forward(x, mask)[b, at[b]]``, but keys and values alone cover every position: the
        query, output projection and feed-forward run for the Q positions only. Used by the last layer of
        ``sequence_vectors``, which needs only the state at each sequence's last item.
        """
        b, n, h = x.shape
        q_len, heads, head_dim = at.shape[1], self.n_heads, h // self.n_heads
        here = x.gather(1, at[:, :, None].expand(b, q_len, h))  # (B, Q, H)
        q = F.linear(here, self.qkv.weight[:h], self.q_bias)  # (B, Q, H)
        q = q.view(b, q_len, heads, head_dim).transpose(1, 2)  # (B, nh, Q, hd)
        kv_bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])  # (2H,)
        kv = F.linear(x, self.qkv.weight[h:], kv_bias)  # (B, L, 2H)
        k, v = kv.view(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, L, hd)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=may_attend[:, None], dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, Q, hd)
        attn = attn.transpose(1, 2).reshape(b, q_len, h)  # (B, Q, H)
        return self._feed_forward(self.norm1(here + self.dropout(self.out(attn))))

    def _feed_forward(self, x: Tensor) -> Tensor:
        """(..., H) -> (..., H): position-wise feed-forward with residual and LayerNorm."""
        return self.norm2(x + self.dropout(self.ff2(F.gelu(self.ff1(x)))))


class SequenceEncoder(nn.Module):
    """Item vectors + learned positions -> LayerNorm -> dropout -> causal Transformer layers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.position = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layers))

    def forward(self, item_vectors: Tensor, input_norm: nn.LayerNorm, dropout: nn.Dropout) -> Tensor:
        """(B, L, H) item vectors of right-padded sequences -> (B, L, H) hidden states.

        Causal attention makes position t depend on items 0..t only, so right padding never changes the
        states of real positions.
        """
        positions = torch.arange(item_vectors.shape[1], device=item_vectors.device)
        x = dropout(input_norm(item_vectors + self.position(positions)))  # (B, L, H)
        for layer in self.layers:
            x = layer(x)
        return x

    def last_states(
        self, item_vectors: Tensor, lengths: Tensor, input_norm: nn.LayerNorm, dropout: nn.Dropout
    ) -> Tensor:
        """(T, H) item vectors of B sequences laid end to end, (B,) lengths -> (B, H) states at their ends.

        The sequences are packed into one row with a block-diagonal causal mask, so no work goes to padding,
        and the last layer computes the B end states only (``TransformerLayer.forward_at``). Equal to
        ``forward`` on the padded batch, taken at each sequence's last item.
        """
        device = item_vectors.device
        starts = torch.cumsum(lengths, 0) - lengths  # (B,)
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)  # (T,)
        positions = torch.arange(len(segment), device=device) - starts[segment]  # (T,) within each sequence
        x = dropout(input_norm(item_vectors + self.position(positions)))[None]  # (1, T, H)
        same = segment[:, None] == segment[None, :]  # (T, T)
        causal = same & (positions[:, None] >= positions[None, :])  # (T, T): earlier items of the same sequence
        for layer in self.layers[:-1]:
            x = layer(x, causal[None, None])
        ends = starts + lengths - 1  # (B,)
        return self.layers[-1].forward_at(x, ends[None], causal[ends][None])[0]  # type: ignore[operator]  # (B, H)


class SequenceModel(nn.Module):
    """What training, evaluation and serving rely on in every model (UniSRec and the baselines).

    ``item_table`` computes the (N, H) item vectors once per step; ``encode`` turns (B, L) indices into that
    table into (B, L, H) states; ``query_vectors(q) @ scoring_table(t).T`` equals ``logits(q, t)``.
    """

    config: ModelConfig
    n_items: int
    item_text: Tensor  # (N, D) frozen language-model vectors (a buffer; text models only)

    @property
    def text_dim(self) -> int:
        return int(self.item_text.shape[1]) if self.config.uses_text else 0

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        raise NotImplementedError

    def sequence_vectors(self, sequences: Tensor, lengths: Tensor, table: Tensor) -> Tensor:
        """(B, L), (B,) -> (B, H): the state at the last real position of each sequence."""
        hidden = self.encode(sequences, table)
        return hidden[torch.arange(len(lengths), device=hidden.device), lengths - 1]

    def packed_sequence_vectors(self, items: Tensor, lengths: Tensor, table: Tensor) -> Tensor:
        """(T,) item indices into ``table`` of B sequences laid end to end, (B,) lengths -> (B, H).

        What serving calls; equal to ``sequence_vectors`` of the right-padded batch (which this default builds:
        models with a cheaper packed form, such as UniSRec, override it).
        """
        lengths = lengths.to(items.device)
        b = len(lengths)
        width = int(lengths.max()) if b else 0
        padded = torch.zeros(b, width, dtype=items.dtype, device=items.device)  # (B, L)
        padded[torch.arange(width, device=items.device)[None, :] < lengths[:, None]] = items  # row-major fill
        return self.sequence_vectors(padded, lengths, table)

    def repeat_offsets(self, history: Tensor, lengths: Tensor) -> Offsets | None:
        """(Q, L) right-padded histories (the input window), (Q,) lengths -> the logit offsets of the items they
        hold (``model.repeat_bias``, ``history_offsets``), or None for a model without them."""
        return None

    @property
    def has_repeat_offsets(self) -> bool:
        """True where ``repeat_offsets`` gives offsets: ``model.repeat_bias``, or a baseline's fixed ones."""
        return self.config.repeat_bias

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live (parameters, or the text buffer of a model without any)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def adds_items_by_text(self) -> bool:
        """True for text-only models (``item_repr="text"``): a new item needs only its language-model vector."""
        return self.config.item_repr == "text"

    def extend_items(self, text_vectors: Tensor) -> int:
        """Append M items given by their (M, D) language-model vectors; returns the new item count.

        The model owns its text buffer and ``n_items``: this is the one way they grow (text-only models only;
        a model with item IDs would have no learned vector for the new items).
        """
        if not self.adds_items_by_text:
            raise ValueError(f"items are added by their text to text-only models; this one's items are "
                             f"{self.config.item_repr!r}")
        if text_vectors.ndim != 2 or text_vectors.shape[1] != self.text_dim:
            raise ValueError(f"text vectors must be (M, {self.text_dim}), got {tuple(text_vectors.shape)}")
        # (N + M, D), a view of a store with spare rows: many small additions copy each row about once
        store, self.item_text = append_rows(self.item_text, text_vectors, getattr(self, "_text_store", None))
        self._text_store: Tensor | None = store  # not a buffer: the model's state is the view above
        self.n_items += len(text_vectors)
        return self.n_items

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SequenceModel:
        """``nn.Module._apply`` (``to``, ``cuda``, ``half``, ...), then the spare-row store of ``extend_items`` let
        go once ``item_text`` is no longer a view of it (moved or converted): not kept alive beside the new one."""
        super()._apply(fn, recurse)
        store = getattr(self, "_text_store", None)
        if store is not None and not holds(store, self.item_text):
            self._text_store = None
        return self

    def logits(self, queries: Tensor, table: Tensor) -> Tensor:
        raise NotImplementedError

    def scoring_table(self, table: Tensor) -> Tensor:
        raise NotImplementedError

    def query_vectors(self, queries: Tensor) -> Tensor:
        raise NotImplementedError


class UniSRec(SequenceModel):
    """The whole model; ``config.item_repr`` picks UniSRec_t (text), UniSRec_t+ID (text+id) or SASRec (id).

    ``text`` is the (N, D) matrix of frozen language-model item vectors (a buffer, moved with the model).
    """

    def __init__(self, config: ModelConfig, n_items: int, text: Tensor | None = None) -> None:
        super().__init__()
        self.config, self.n_items = config, n_items
        h = config.hidden_size
        if config.uses_text:
            if text is None or text.ndim != 2 or text.shape[0] != n_items:
                shape = None if text is None else tuple(text.shape)
                raise ValueError(f"item_repr={config.item_repr!r} needs a ({n_items}, D) text matrix, got {shape}")
            # n_items = 0 (pre-training): no catalogue; every call passes the text vectors it needs
            self.register_buffer("item_text", text.float().contiguous(), persistent=False)  # (N, D)
            if config.center_text:  # the catalogue's mean text vector (pre-training: zeros, its domains centred)
                center = text.float().mean(0) if n_items else torch.zeros(text.shape[1])
                self.register_buffer("text_center", center.contiguous())  # (D,)
            else:
                self.text_center: Tensor | None = None
            self.adaptor: MoEAdaptor | None = MoEAdaptor(
                text.shape[1],
                h,
                config.n_experts,
                dropout=config.adaptor_dropout,
                whitening=config.whitening,
                noisy=config.noisy_gating,
                init_std=config.initializer_range,
            )
        else:
            self.adaptor = None
            self.text_center = None
        self.item_id: nn.Embedding | None = nn.Embedding(n_items, h) if config.uses_ids else None
        self.input_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.hidden_dropout)
        self.encoder = SequenceEncoder(config)
        self.apply(self._init_weights)
        # softplus(w) weighs the last item in the state (model.skip_gate); softplus(log(e - 1)) = 1
        self.skip_weight = nn.Parameter(torch.tensor(math.log(math.e - 1))) if config.skip_gate else None
        # [w_last, w_hist]: logit offsets of the history's last item and of every item in it (model.repeat_bias)
        self.repeat_weight = nn.Parameter(torch.zeros(2)) if config.repeat_bias else None

    @classmethod
    def without_catalogue(cls, config: ModelConfig, text_dim: int) -> UniSRec:
        """A text model whose item vectors are passed with each call (multi-domain pre-training)."""
        return cls(config, 0, torch.zeros(0, text_dim))

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, self.config.initializer_range)

    def item_table(self, items: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        """Adapted item vectors, (N, H) for all items or (M, H) for ``items`` (M,).

        ``text`` replaces the language-model vectors of those items (e.g. a word-dropped view), (M, D).
        """
        parts = []
        if self.adaptor is not None:
            if text is None:
                text = self.item_text if items is None else self.item_text[items]  # (N, D) or (M, D)
            if self.text_center is not None:
                text = text - self.text_center  # (N or M, D)
            parts.append(self.adaptor(text))
        if self.item_id is not None:
            parts.append(self.item_id.weight if items is None else self.item_id(items))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def forward(
        self, sequences: Tensor, items: Tensor | None = None, text: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One differentiable pass (what DistributedDataParallel wraps): item table, then sequences.

        sequences (B, L) index into the table of ``items`` (M,) (all N items when None), whose text
        vectors may be replaced by ``text`` (M, D). Returns hidden states (B, L, H) and the table (M, H).
        """
        table = self.item_table(items, text)
        return self.encode(sequences, table), table

    def encode(self, sequences: Tensor, table: Tensor) -> Tensor:
        """(B, L) right-padded item indices into ``table`` (N', H) -> (B, L, H) hidden states."""
        if sequences.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {sequences.shape[1]} > max_seq_len {self.config.max_seq_len}")
        items = F.embedding(sequences, table)  # (B, L, H)
        hidden = self.encoder(items, self.input_norm, self.input_dropout)  # (B, L, H)
        return self._skip(hidden, items)

    def _skip(self, hidden: Tensor, items: Tensor) -> Tensor:
        """(..., H) states and the (..., H) vectors of their own items -> (..., H) output states
        (``model.last_item_skip``, ``model.skip_gate``)."""
        if not self.config.last_item_skip:
            return hidden
        if self.skip_weight is None:
            return hidden + items
        return F.normalize(hidden, dim=-1) + F.softplus(self.skip_weight) * F.normalize(items, dim=-1)

    def repeat_offsets(self, history: Tensor, lengths: Tensor) -> Offsets | None:
        if self.repeat_weight is None:
            return None
        return history_offsets(self.repeat_weight, history, lengths)

    def packed_sequence_vectors(self, items: Tensor, lengths: Tensor, table: Tensor) -> Tensor:
        """(T,) item indices into ``table`` of B sequences laid end to end, (B,) lengths -> (B, H).

        The same states as ``sequence_vectors`` on the padded batch, with no work spent on padding or on
        positions before each sequence's last (``SequenceEncoder.last_states``): what serving uses.
        """
        if len(lengths) and int(lengths.max()) > self.config.max_seq_len:
            raise ValueError(f"sequence length {int(lengths.max())} > max_seq_len {self.config.max_seq_len}")
        vectors = table[items]  # (T, H)
        states = self.encoder.last_states(vectors, lengths, self.input_norm, self.input_dropout)  # (B, H)
        return self._skip(states, vectors[torch.cumsum(lengths, 0) - 1])  # with each sequence's last item vector

    def logits(self, queries: Tensor, table: Tensor) -> Tensor:
        """(T, H) sequence states x (N, H) items -> (T, N) logits: cos / temperature, or dot for SASRec."""
        if self.config.uses_text:
            return F.normalize(queries, dim=-1) @ F.normalize(table, dim=-1).T / self.config.temperature
        return queries @ table.T

    def scoring_table(self, table: Tensor) -> Tensor:
        """(N, H) table scaled so that ``query_vectors(q) @ scoring_table(t).T`` equals ``logits(q, t)``."""
        return F.normalize(table, dim=-1) / self.config.temperature if self.config.uses_text else table

    def query_vectors(self, queries: Tensor) -> Tensor:
        return F.normalize(queries, dim=-1) if self.config.uses_text else queries
