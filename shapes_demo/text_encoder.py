"""A trainable twin of ComfyUI's CLIP text transformer (comfy.clip_model.CLIPTextModel).

Same parameters, same names, same arithmetic (causal self-attention, quick-GELU MLP, pre-norm layers,
final layer norm), written without in-place residual additions so that autograd can train it. Its state
dict loads unchanged into ComfyUI's class for inference (a test checks the two give the same output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextEncoder"]


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, H, N, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))  # quick GELU, as CLIP


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn, self.mlp = _Attention(width, heads), _MLP(width, hidden)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(positions, width)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(width, heads, hidden) for _ in range(layers))


class _TextModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        width = config["hidden_size"]
        self.embeddings = _Embeddings(config["vocab_size"], config["max_position_embeddings"], width)
        self.encoder = _Encoder(config["num_hidden_layers"], width, config["num_attention_heads"],
                                config["intermediate_size"])
        self.final_layer_norm = nn.LayerNorm(width)


class TextEncoder(nn.Module):
    """`vocabulary` (token ids): train only these rows of the 49408-token embedding table, in a small table of
    their own; the full table stays as initialised. Keeps the optimiser's state and a resumable checkpoint
    small (the full table is 3.2 M of the model's parameters); `comfy_state_dict()` writes the rows back."""

    vocabulary_ids: torch.Tensor  # [V] the trained rows' token ids (buffers, with `vocabulary`)
    compact_ids: torch.Tensor  # [vocab_size] each token's row in the small table, or -1

    def __init__(self, config: dict, vocabulary: list[int] | None = None):
        super().__init__()
        self.text_model = _TextModel(config)
        self.text_projection = nn.Linear(config["hidden_size"], config["hidden_size"], bias=False)
        self.vocabulary_embedding: nn.Parameter | None = None
        if vocabulary is not None:
            ids = torch.tensor(sorted(set(vocabulary)))
            compact = torch.full((config["vocab_size"],), -1, dtype=torch.long)
            compact[ids] = torch.arange(len(ids))
            self.register_buffer("vocabulary_ids", ids)  # [V]
            self.register_buffer("compact_ids", compact)  # [vocab_size]: row in the small table, or -1
            self.text_model.embeddings.token_embedding.weight.requires_grad_(False)
            self.vocabulary_embedding = nn.Parameter(torch.zeros(len(ids), config["hidden_size"]))

    def reset_vocabulary(self) -> None:
        """Start the small table from the full table's rows (after the full table is initialised)."""
        if self.vocabulary_embedding is not None:
            with torch.no_grad():
                self.vocabulary_embedding.copy_(self.text_model.embeddings.token_embedding.weight[self.vocabulary_ids])

    def comfy_state_dict(self) -> dict:
        """The state dict of ComfyUI's CLIP text model: the trained rows written into the full table."""
        state = {k: v for k, v in self.state_dict().items()
                 if k not in ("vocabulary_embedding", "vocabulary_ids", "compact_ids")}
        if self.vocabulary_embedding is not None:
            key = "text_model.embeddings.token_embedding.weight"
            table = state[key].clone()
            table[self.vocabulary_ids] = self.vocabulary_embedding.detach()
            state[key] = table
        return state

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 77] -> last hidden state after the final layer norm [B, 77, width] (SD1's context)."""
        tm = self.text_model
        embedded = tm.embeddings.token_embedding(tokens)  # [B, 77, width]
        if self.vocabulary_embedding is not None:
            compact = self.compact_ids[tokens]  # [B, 77]
            trained = self.vocabulary_embedding[compact.clamp_min(0)]
            embedded = torch.where((compact >= 0)[..., None], trained, embedded)
        x = embedded + tm.embeddings.position_embedding.weight[: tokens.shape[1]]
        n = tokens.shape[1]
        mask = torch.full((n, n), float("-inf"), device=tokens.device).triu(1)
        for layer in tm.encoder.layers:
            x = layer(x, mask)
        return tm.final_layer_norm(x)
