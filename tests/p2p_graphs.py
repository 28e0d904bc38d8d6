"""Graph builders and recording nodes shared by the host tests.

The recording nodes are test fixtures registered into the real host; they patch a clone of the MODEL
through ComfyUI's sanctioned hooks, exactly as another node pack would.
"""

from __future__ import annotations

import torch

from tools.graph import Graph

SOURCE = "a red circle on the left and a small square"

# The CPU backend's UNet is not batch-size invariant: one forward pass of the same latent at batch 1 and
# at batch 4 differs by ~1e-7 relative (measured; ComfyUI's plain KSampler shows the same when its batch
# grows). A P2P run is a bigger batch than a single generation, so against a batch-1 KSampler the source
# can only match to within that rounding, accumulated over the steps.
BATCH_ROUNDING = 1e-5
TARGET = "a blue circle on the left and a small square"


def p2p_graph(
    source=SOURCE,
    target=TARGET,
    *,
    shape="sd15",
    dtype="float32",
    sampler="euler",
    scheduler="normal",
    steps=6,
    cfg=5.0,
    cross=0.8,
    self_replace=0.4,
    self_layers="coarse",
    mode="auto",
    word_schedule="",
    negative="",
    width=128,
    height=128,
    seed=1,
    model_node=None,
):
    """A graph: random model -> P2PEditSpec -> P2PSampler. Returns (graph, named nodes)."""
    g = Graph()
    loader = g.node("RandomModelLoader", "loader", shape=shape, seed=0, dtype=dtype)
    model = loader.out(0) if model_node is None else model_node(g, loader.out(0))
    clip = loader.out(1)
    edit = g.node("P2PEditSpec", "edit", clip=clip, source_prompt=source, target_prompt=target, mode=mode,
                  cross_replace=cross, self_replace=self_replace, self_layers=self_layers, word_schedule=word_schedule)
    neg = g.node("CLIPTextEncode", "negative", clip=clip, text=negative)
    latent = g.node("EmptyLatentImage", "latent", width=width, height=height, batch_size=1)
    sampler_node = g.node("P2PSampler", "p2p", model=model, edit=edit, negative=neg, latent_image=latent, seed=seed,
                          steps=steps, cfg=cfg, sampler_name=sampler, scheduler=scheduler, denoise=1.0)
    return g, {"loader": loader, "model": model, "clip": clip, "edit": edit, "negative": neg, "latent": latent,
               "p2p": sampler_node}


def add_plain_ksampler(g, n, prompt_text, batch_size=1, node_id="plain", model=None):
    """A stock KSampler run of one prompt with the P2P sampler's settings, on `batch_size` copies of the latent."""
    p2p = n["p2p"].inputs
    pos = g.node("CLIPTextEncode", f"{node_id}_pos", clip=n["clip"], text=prompt_text)
    latent = n["latent"] if batch_size == 1 else g.node("RepeatLatentBatch", f"{node_id}_latent",
                                                         samples=n["latent"], amount=batch_size)
    return g.node("KSampler", node_id, model=model or n["model"], positive=pos, negative=n["negative"],
                  latent_image=latent, seed=p2p["seed"], steps=p2p["steps"], cfg=p2p["cfg"],
                  sampler_name=p2p["sampler_name"], scheduler=p2p["scheduler"], denoise=1.0)


def samples(outputs, node_id):
    return outputs[node_id][0]["samples"]


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_stock_source_and_an_edit(out, without: str, what: str, inside=(...,)) -> None:
    """The run "p2p" with something other nodes add (a conditioning, a model patch): its source is the stock
    KSampler's picture "plain" bit for bit, the addition changes it (against the run `without` it), and the
    edit still differs from the source (`inside`: where to compare, the whole latent by default)."""
    p2p, plain, other = samples(out, "p2p"), samples(out, "plain"), samples(out, without)
    assert torch.equal(p2p[0], plain[0])
    assert not torch.equal(p2p[0], other[0]), f"{what} should change the picture"
    assert relative_error(p2p[1][inside], p2p[0][inside]) > 1e-3, "the edit should differ from the source"


class Recorder:
    """A MODEL -> MODEL test node that records what other packs' patches would see.

    Records live on the class, keyed by the node's `key` input, so a test can read them after a run.
    """

    RECORDS: dict[str, list] = {}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "prompt_to_prompt/dev"

    @classmethod
    def INPUT_TYPES(cls):
        kinds = ["attn2", "evaluations", "additive_attn2", "additive_attn2_2tuple", "additive_attn1", "batch_doubling",
                 "split_chunks"]
        return {"required": {"model": ("MODEL",), "key": ("STRING", {"default": "r"}), "what": (kinds,)}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")  # always re-run: records are per run

    def patch(self, model, key, what):
        import comfy.patcher_extension
        from comfy.ldm.modules.attention import optimized_attention

        records = self.RECORDS.setdefault(key, [])
        records.clear()
        m = model.clone()
        if what == "attn2":
            def before(n, context, value, extra):
                records.append({"n": n.clone(), "context": context.clone(), "block": extra["block"],
                                "index": extra["block_index"], "cond_or_uncond": list(extra["cond_or_uncond"]),
                                "sigma": float(extra["sigmas"].max()),
                                "sample_sigmas": extra["sample_sigmas"].tolist()})
                return n, context, value

            def after(out, extra):
                records[-1]["out"] = out.clone()
                return out

            m.set_model_attn2_patch(before)
            m.set_model_attn2_output_patch(after)
        elif what == "evaluations":
            def predict(executor, x, timestep, model_options, seed):
                denoised = executor(x, timestep, model_options, seed)
                records.append({"kind": "predict", "sigma": float(timestep.max()), "x": x.clone(),
                                "denoised": denoised.clone()})
                return denoised

            def apply_model(executor, x, t, *args, **kwargs):
                records.append({"kind": "unet_input", "x": x.clone(), "sigma": float(t.max())})
                return executor(x, t, *args, **kwargs)

            m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "test_recorder", predict)
            m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_recorder", apply_model)
        elif what == "split_chunks":
            # The positive and the negative in separate UNet calls, as ComfyUI does when memory is short.
            def split(executor, model, conds, x_in, timestep, model_options):
                records.append(len(conds))
                return [executor(model, [c if j == i else None for j, c in enumerate(conds)], x_in, timestep,
                                 model_options)[i] for i in range(len(conds))]

            m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test_recorder", split)
        elif what == "batch_doubling":
            # Like attention-couple packs: the attention batch is changed before the replace patch runs.
            def widen(n, context, value, extra):
                records.append(1)
                return torch.cat([n, n]), torch.cat([context, context]), torch.cat([value, value])

            def narrow(out, extra):
                return out[: out.shape[0] // 2]

            m.set_model_attn2_patch(widen)
            m.set_model_attn2_output_patch(narrow)
        else:
            # An IPAdapter-like patch: standard attention plus an extra term that depends on the queries.
            def additive(q, k, v, extra):
                records.append(1)
                return optimized_attention(q, k, v, extra["n_heads"]) + 0.5 * torch.tanh(q)

            dm = m.get_model_object("diffusion_model")
            for block_name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]),
                                       ("output", dm.output_blocks)):
                for block_id, block in enumerate(blocks):
                    for layer in block:
                        for index, _ in enumerate(getattr(layer, "transformer_blocks", [])):
                            if what == "additive_attn2_2tuple":
                                m.set_model_attn2_replace(additive, block_name, block_id)
                            elif what == "additive_attn1":
                                m.set_model_attn1_replace(additive, block_name, block_id, index)
                            else:
                                m.set_model_attn2_replace(additive, block_name, block_id, index)
        return (m,)


def add_sigmas(g, n, kind: str, node_id: str = "sigmas"):
    """A SIGMAS node for the P2P sampler's steps: `basic` (its scheduler), `karras` (the model's own noise range,
    as the KSampler's karras scheduler uses it) or `ays` (AlignYourSteps, SD1)."""
    p2p = n["p2p"].inputs
    if kind == "basic":
        return g.node("BasicScheduler", node_id, model=n["model"], scheduler=p2p["scheduler"], steps=p2p["steps"],
                      denoise=1.0)
    if kind == "karras":
        import comfy.model_sampling

        sampling = comfy.model_sampling.ModelSamplingDiscrete()  # SD1's default schedule, the random models'
        return g.node("KarrasScheduler", node_id, steps=p2p["steps"], sigma_max=float(sampling.sigma_max),
                      sigma_min=float(sampling.sigma_min), rho=7.0)
    return g.node("AlignYourStepsScheduler", node_id, model_type="SD1", steps=p2p["steps"], denoise=1.0)


def add_guided_run(g, n, sigmas, node_id="guided", latent=None, noise=None, guider=None, **guider_inputs):
    """SamplerCustomAdvanced with a P2PGuider of the P2P sampler's model, edit, negative, cfg, seed and sampler."""
    p2p = n["p2p"].inputs
    if guider is None:
        guider = g.node("P2PGuider", f"{node_id}_guider", model=p2p["model"], edit=p2p["edit"],
                        negative=p2p["negative"], cfg=p2p["cfg"], **guider_inputs)
    noise = noise or g.node("RandomNoise", f"{node_id}_noise", noise_seed=p2p["seed"])
    sampler = g.node("KSamplerSelect", f"{node_id}_sampler", sampler_name=p2p["sampler_name"])
    return g.node("SamplerCustomAdvanced", node_id, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                  latent_image=latent or n["latent"])
