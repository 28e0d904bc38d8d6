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
    def __init__(self, config: dict):
        super().__init__()
        self.text_model = _TextModel(config)
        self.text_projection = nn.Linear(config["hidden_size"], config["hidden_size"], bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 77] -> last hidden state after the final layer norm [B, 77, width] (SD1's context)."""
        tm = self.text_model
        x = tm.embeddings.token_embedding(tokens) + tm.embeddings.position_embedding.weight[: tokens.shape[1]]
        n = tokens.shape[1]
        mask = torch.full((n, n), float("-inf"), device=tokens.device).triu(1)
        for layer in tm.encoder.layers:
            x = layer(x, mask)
        return tm.final_layer_norm(x)
