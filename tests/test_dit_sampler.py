"""P2PSampler and P2PGuider on Flux, Chroma and SD3 (tiny random models from ComfyUI's classes, with ComfyUI's real
T5 and CLIP tokenizers), through ComfyUI's own executor: the source is the stock sampler's picture, the edit keeps the
source's structure by taking its image queries and keys inside the self window (Shin et al., ICCV 2025), and what
the pack does not do on these models yet is refused naming the input."""

import pytest
import torch

from p2p_graphs import BATCH_ROUNDING, add_guided_run, add_sigmas, relative_error, samples
from tools.graph import Graph
from tools.host import HostError

SOURCE = "a red circle on the left"
TARGET = "a blue circle on the left"
CFG = {"flux": 1.0, "chroma": 4.0, "sd3": 4.0}  # Flux.1-dev is guidance-distilled: cfg 1
FAMILIES = list(CFG)


def dit_graph(family, source=SOURCE, target=TARGET, sampler="euler", self_replace=0.4, steps=6):
    """Random Flux/Chroma -> P2PEditSpec -> P2PSampler, and the stock KSampler on the source prompt at the same
    batch ("plain")."""
    g = Graph()
    loader = g.node("RandomModelLoader", "loader", shape=family, seed=0, dtype="float32")
    model, clip = loader.out(0), loader.out(1)
    edit = g.node("P2PEditSpec", "edit", clip=clip, source_prompt=source, target_prompt=target, mode="auto",
                  cross_replace=0.8, self_replace=self_replace, self_layers="coarse", word_schedule="")
    negative = g.node("CLIPTextEncode", "negative", clip=clip, text="")
    latent = g.node("EmptySD3LatentImage", "latent", width=64, height=64, batch_size=1)
    p2p = g.node("P2PSampler", "p2p", model=model, edit=edit, negative=negative, latent_image=latent, seed=1,
                 steps=steps, cfg=CFG[family], sampler_name=sampler, scheduler="simple", denoise=1.0)
    positive = g.node("CLIPTextEncode", "positive", clip=clip, text=source)
    batch = g.node("RepeatLatentBatch", "batch", samples=latent, amount=2)
    g.node("KSampler", "plain", model=model, positive=positive, negative=negative, latent_image=batch, seed=1,
           steps=steps, cfg=CFG[family], sampler_name=sampler, scheduler="simple", denoise=1.0)
    return g, {"loader": loader, "model": model, "clip": clip, "edit": edit, "negative": negative, "latent": latent,
               "p2p": p2p}



@pytest.mark.parametrize("family", FAMILIES)
def test_the_source_is_the_stock_sampler_picture(host, family):
    """Bit for bit at the same batch; the edit differs. With Chroma's real CFG the unconditional rows are untouched
    (otherwise the source would differ)."""
    g, _ = dit_graph(family)
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    p2p, plain = samples(out, "p2p"), samples(out, "plain")
    assert torch.equal(p2p[0], plain[0])
    assert relative_error(p2p[1], p2p[0]) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_with_an_ancestral_sampler_the_source_is_a_single_stock_run(host, family):
    """The per-step noise is drawn as for one latent and shared, so the source matches the stock sampler on one
    latent, to the backend's batch rounding."""
    g, _ = dit_graph(family, sampler="euler_ancestral")
    g.nodes["plain"].inputs["latent_image"] = g.nodes["latent"]
    out = host.run(g.prompt(), keep=("p2p", "plain"))
    assert relative_error(samples(out, "p2p")[0], samples(out, "plain")[0]) < BATCH_ROUNDING


@pytest.mark.parametrize("family", FAMILIES)
def test_identical_prompts_with_a_full_window_reproduce_the_source(host, family):
    g, _ = dit_graph(family, target=SOURCE, self_replace=1.0)
    out = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")
    assert torch.equal(out[1], out[0])


class JointRecorder:
    """A MODEL -> MODEL test node: an attention override set before P2P (as another pack would set one), which
    records, per joint attention call of our batch, whether the edit row's image queries and keys are the source's
    and whether its text queries are. P2P chains it, so it sees the arguments after injection."""

    RECORDS: list = []
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "text_tokens": ("INT", {"default": 0})}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def patch(self, model, text_tokens):
        records = self.RECORDS
        records.clear()

        def override(func, *args, **kwargs):
            q, k = args[0], args[1]
            chunks = (kwargs.get("transformer_options") or {}).get("cond_or_uncond") or []
            axis = 2 if kwargs.get("skip_reshape") else 1  # Flux [B, H, L, d]; SD3 [B, L, H * d]
            if 0 in chunks and q.shape[0] == 2 * len(chunks) and q.shape[axis] > text_tokens:
                source = 2 * chunks.index(0)
                image = (slice(None),) * (axis - 1) + (slice(text_tokens, None),)
                text = (slice(None),) * (axis - 1) + (slice(None, text_tokens),)
                records.append({
                    "sigma": float(kwargs["transformer_options"]["sigmas"].max()),
                    "image": all(torch.equal(x[(source + 1, *image)], x[(source, *image)]) for x in (q, k)),
                    "text": torch.equal(q[(source + 1, *text)], q[(source, *text)]),
                })
            return func(*args, **kwargs)

        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
        return (m,)


@pytest.mark.parametrize("family, text_tokens, calls", [("flux", 256, 4), ("sd3", 154, 3)])
def test_inside_the_self_window_the_edit_takes_the_source_image_queries_and_keys(host, family, text_tokens, calls):
    """6 steps, self_replace 0.5: steps 1-3 inject and 4-6 do not; the edit's text tokens (another prompt) are
    always its own. Flux (cfg 1, [B, H, L, d], 2 double + 2 single blocks) and SD3 (cfg 4, [B, L, H * d], 3 joint
    blocks; 77 CLIP + 77 T5 text tokens)."""
    host.register({"P2PTestJointRecorder": JointRecorder})
    g, n = dit_graph(family, self_replace=0.5)
    g.node("P2PTestJointRecorder", "recorder", model=n["model"], text_tokens=text_tokens)
    n["p2p"].inputs["model"] = g.nodes["recorder"]
    host.run(g.prompt(), keep=("p2p",))
    records = JointRecorder.RECORDS
    sigmas = sorted({r["sigma"] for r in records}, reverse=True)
    assert len(sigmas) == 6 and len(records) == 6 * calls
    inside = [r for r in records if r["sigma"] in sigmas[:3]]
    outside = [r for r in records if r["sigma"] in sigmas[3:]]
    assert all(r["image"] for r in inside)
    assert not all(r["image"] for r in outside)
    assert not any(r["text"] for r in records)


def test_the_guider_gives_the_sampler_batch_on_flux(host):
    g, n = dit_graph("flux")
    add_guided_run(g, n, add_sigmas(g, n, "basic"))
    out = host.run(g.prompt(), keep=("p2p", "guided"))
    assert torch.equal(samples(out, "guided"), samples(out, "p2p"))


def test_the_model_is_left_unchanged(host):
    g, _ = dit_graph("flux")
    out = host.run(g.prompt(), keep=("p2p", "loader"))
    model = out["loader"][0]
    assert "optimized_attention_override" not in model.model_options.get("transformer_options", {})


@pytest.mark.parametrize("change, match", [
    (lambda g, n: n["p2p"].inputs.update(edit=g.node("P2PReweight", "w", edit=n["edit"], weights="blue: 2")),
     r"^P2PSampler: input 'edit': edit 1 uses re-weighting \(P2P Reweight\), which the pack does not do on Flux"),
    (lambda g, n: n["edit"].inputs.update(word_schedule="blue: 0.5"),
     r"^P2PSampler: input 'edit': edit 1 uses word_schedule"),
])
def test_what_flux_does_not_do_yet_is_refused(host, change, match):
    g, n = dit_graph("flux")
    change(g, n)
    with pytest.raises(HostError, match=match):
        host.run(g.prompt(), keep=("p2p",))


def test_chroma_prompts_of_other_lengths_are_refused(host):
    g, _ = dit_graph("chroma", target="a big blue circle on the left")
    with pytest.raises(HostError, match=r"^P2PSampler: input 'edit': its prompts encode to \d+ and \d+ text tokens"):
        host.run(g.prompt(), keep=("p2p",))


def test_flux_guidance_comes_through_positive_as_flux_guidance_sets_it(host):
    """FluxGuidance on a conditioning given to `positive` guides the source and the edit; the source is then the
    stock KSampler's picture with that FluxGuidance (and differs from the default guidance's, 3.5)."""
    g, n = dit_graph("flux")
    guided = g.node("FluxGuidance", "guidance", conditioning=g.nodes["positive"], guidance=1.5)
    g.node("P2PSampler", "default", **dict(n["p2p"].inputs))
    n["p2p"].inputs["positive"] = guided
    g.nodes["plain"].inputs["positive"] = guided
    out = host.run(g.prompt(), keep=("p2p", "plain", "default"))
    p2p = samples(out, "p2p")
    assert torch.equal(p2p[0], samples(out, "plain")[0])
    assert not torch.equal(p2p[0], samples(out, "default")[0])
