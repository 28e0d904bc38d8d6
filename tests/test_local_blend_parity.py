"""Local blend against the public code's schedule, through ComfyUI's own executor.

The public Prompt-to-Prompt code resets every edited latent to the source outside the mask after every
scheduler step (`x_t = x_t[:1] + mask * (x_t - x_t[:1])` in LocalBlend, from `start` on) and never blends the
model's prediction. The pack blends the sampler's own latent in place as each evaluation begins and blends
the prediction too. Here the public schedule is written from that description, as an Euler/DDIM loop that
runs the pack's attention control with its own blending switched off, and both run on the same model.
"""

import pytest
import torch

from p2p_graphs import p2p_graph, relative_error, samples


def public_schedule(pack):
    """(EditRun subclass, sampler factory) implementing the public code's blend schedule."""
    import comfy.samplers

    runs = []

    class PublicScheduleRun(pack.p2p.EditRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)

        def blend_state(self, x, source=None):
            pass  # the loop below resets the latent after each step instead

        def blend_output(self, denoised):
            super().blend_output(denoised)  # only to update the masks from the maps so far
            return denoised

        def blend_final(self, latent):
            return latent

    def sampler(_sampler):
        def euler_with_resets(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
            s_in = x.new_ones([x.shape[0]])
            for i in range(len(sigmas) - 1):
                denoised = model(x, sigmas[i] * s_in, **(extra_args or {}))
                d = (x - denoised) / sigmas[i]
                x = x + d * (sigmas[i + 1] - sigmas[i])
                for e, mask in enumerate(runs[-1].masks):
                    if mask is not None:
                        m = mask[0].to(x)
                        x[e + 1] = x[0] + m * (x[e + 1] - x[0])
            return x

        return comfy.samplers.KSAMPLER(euler_with_resets)

    return PublicScheduleRun, sampler


@pytest.mark.parametrize("threshold, start", [(0.6, 0.2), (0.8, 0.0), (0.7, 0.5)])
def test_local_blend_follows_the_public_schedule(host, pack, monkeypatch, threshold, start):
    g, n = p2p_graph(steps=10, width=256, height=256)
    g.node("P2PLocalBlend", "blend", edit=n["edit"], source_words="red circle", target_words="blue circle",
           threshold=threshold, start=start)
    n["p2p"].inputs["edit"] = g.nodes["blend"]
    ours = samples(host.run(g.prompt(), keep=("p2p",)), "p2p")

    run_class, sampler = public_schedule(pack)
    monkeypatch.setattr(pack.adapter.sampling, "EditRun", run_class)
    monkeypatch.setattr(pack.adapter.sampling, "shared_noise_sampler", sampler)
    public = samples(host.run(g.prompt(), keep=("p2p",), fresh=True), "p2p")

    same = public[1] == public[0]
    assert 0 < same.sum() < same.numel(), "the mask should keep part of the picture and edit the rest"
    assert torch.equal(ours[0], public[0])
    assert relative_error(ours[1], public[1]) < 1e-5
