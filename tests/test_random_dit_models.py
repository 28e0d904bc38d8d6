"""The random MM-DiTs of tools.random_models (Flux, Chroma, SD3) in stock ComfyUI graphs: they sample, decode, and
their text encoders give the conditioning layout of the real models; and how ComfyUI calls their joint attention."""

from __future__ import annotations

import pytest
import torch

from tools.graph import Graph

PROMPT = "a red circle"
T5_PIECES = ["▁", "a", "▁red", "▁circle", "</s>"]  # T5's sentencepiece splits a leading "a" into "▁" + "a"
CFG = {"flux": 1.0, "chroma": 4.0, "sd3": 4.0}  # Flux.1-dev is guidance-distilled: cfg 1 and a FluxGuidance


def sampling_graph(family: str, prompt: str = PROMPT) -> Graph:
    """RandomModelLoader -> CLIPTextEncode (-> FluxGuidance) -> KSampler (euler, 4 steps, 64x64) -> VAEDecode."""
    g = Graph()
    model, clip, vae = g.node("RandomModelLoader", "loader", shape=family, seed=0, dtype="float32").outputs(3)
    positive = g.node("CLIPTextEncode", "positive", clip=clip, text=prompt)
    if family == "flux":
        positive = g.node("FluxGuidance", "guidance", conditioning=positive, guidance=3.5)
    negative = g.node("CLIPTextEncode", "negative", clip=clip, text="")
    latent = g.node("EmptySD3LatentImage", "latent", width=64, height=64, batch_size=1)
    sampler = g.node("KSampler", "sampler", model=model, positive=positive, negative=negative, latent_image=latent,
                     seed=1, steps=4, cfg=CFG[family], sampler_name="euler", scheduler="simple", denoise=1.0)
    g.node("VAEDecode", "decode", samples=sampler, vae=vae)
    return g


@pytest.mark.parametrize("family", ["flux", "chroma", "sd3"])
def test_samples_and_decodes(host, family):
    out = host.run(sampling_graph(family).prompt(), keep=("sampler", "decode"))
    latent, image = out["sampler"][0]["samples"], out["decode"][0]
    print(f"{family}: latent {tuple(latent.shape)}, image {tuple(image.shape)}")
    assert latent.shape == (1, 16, 8, 8)
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(latent).all() and torch.isfinite(image).all()
    other = host.run(sampling_graph(family, "a blue square").prompt(), keep=("sampler",))["sampler"][0]["samples"]
    assert not torch.equal(other, latent), "the prompt does not reach the model"


def t5_pieces(clip, text: str) -> list[str]:
    tokenizer = getattr(clip.tokenizer, "t5xxl", None) or clip.tokenizer.clip_t5xxl  # Chroma: an SD1Tokenizer
    ids = [token for token, _weight in clip.tokenize(text)["t5xxl"][0] if token != 0]  # 0: T5's <pad>
    return tokenizer.tokenizer.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("family", ["flux", "chroma", "sd3"])
def test_conditioning_layout(host, family):
    g = sampling_graph(family)
    encoded = "guidance" if family == "flux" else "positive"
    out = host.run(g.prompt(), keep=("loader", encoded, "negative"))
    clip = out["loader"][1]
    [(cond, extra)] = out[encoded][0]
    [(empty, _)] = out["negative"][0]
    pooled = extra.get("pooled_output")
    tokens = {name: len(chunks[0]) for name, chunks in clip.tokenize(PROMPT).items()}
    print(f"{family}: tokens {tokens}, T5 pieces {t5_pieces(clip, PROMPT)}, cond {tuple(cond.shape)}, "
          f"pooled {None if pooled is None else tuple(pooled.shape)}, empty prompt {tuple(empty.shape)}, "
          f"other keys {sorted(set(extra) - {'pooled_output'})}")
    assert t5_pieces(clip, PROMPT) == T5_PIECES
    if family == "flux":  # T5 tokens padded to 256; CLIP-L's pooled output modulates
        assert tokens == {"l": 77, "t5xxl": 256}
        assert cond.shape == empty.shape == (1, 256, 64) and pooled.shape == (1, 32)
        assert extra["guidance"] == 3.5
    elif family == "chroma":  # T5 only, unpadded: the pieces and </s>; the empty prompt is </s> alone
        assert tokens == {"t5xxl": 5}
        assert cond.shape == (1, 5, 64) and empty.shape == (1, 1, 64) and pooled is None
    else:  # 77 CLIP tokens (CLIP-L | CLIP-G channels), then 77 T5 tokens, both zero-padded to 4096 channels
        assert tokens == {"l": 77, "g": 77, "t5xxl": 77}
        assert cond.shape == empty.shape == (1, 154, 4096) and pooled.shape == (1, 64)  # pooled CLIP-L | CLIP-G
        assert cond[:, :, 64:].abs().max() == 0 and cond[:, :, :64].abs().amax(dim=-1).gt(0).all()


@pytest.mark.parametrize("family", ["flux", "chroma", "sd3"])
def test_joint_attention_calls(host, family):
    """What an `optimized_attention_override` sees: one joint attention per block, text tokens first."""
    import nodes

    from tools.random_models import build_clip, build_model

    calls = []

    def override(func, *args, **kwargs):
        options = kwargs["transformer_options"]
        calls.append(([tuple(a.shape) for a in args[:3]], args[3] if len(args) > 3 else kwargs["heads"],
                      options.get("block_type"), options.get("block_index"), list(options["cond_or_uncond"])))
        return func(*args, **kwargs)

    model, clip = build_model(family).clone(), build_clip(family)
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    nodes.common_ksampler(model, 1, 1, 2.0, "euler", "simple", positive, negative,
                          {"samples": torch.zeros(1, 16, 8, 8)})
    for call in calls:
        print(family, *call)
    image = 16  # 8x8 latent, 2x2 patches
    if family == "sd3":  # q, k: (batch, tokens, heads * 64), v: (batch, tokens, heads, 64); no block info
        assert calls == [([(2, 154 + image, 128), (2, 154 + image, 128), (2, 154 + image, 2, 64)], 2, None, None,
                          [1, 0])] * 3
    else:  # (batch, heads, tokens, head width), RoPE applied; every block's call is joint
        text = {"flux": (256, 256), "chroma": (5, 1)}[family]  # Chroma's cond and uncond differ: run apart
        batches = [(2, *text[:1], [1, 0])] if text[0] == text[1] else [(1, text[0], [0]), (1, text[1], [1])]
        assert calls == [([(b, 2, t + image, 32)] * 3, 2, kind, i, cu)
                         for b, t, cu in batches for kind in ("double", "single") for i in range(2)]
