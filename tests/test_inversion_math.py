"""The inversion arithmetic on an analytic model: Gaussian data, whose exact denoiser is known."""

from itertools import pairwise

import torch

from p2p.inversion import Inversion, ddim_inversion, ddim_step, landing_prediction, null_text_inversion, trajectory_at

DATA_STD = 0.7


def gaussian_denoiser(mean):
    """The exact denoiser of data ~ N(mean, DATA_STD^2) per pixel."""
    def denoise(x, sigma, mean=mean):
        return mean + (x - mean) * (DATA_STD ** 2 / (DATA_STD ** 2 + sigma ** 2))
    return denoise


def schedule(steps, top=20.0, bottom=0.02):
    sigmas = torch.logspace(torch.log10(torch.tensor(top)), torch.log10(torch.tensor(bottom)), steps)
    return torch.cat([sigmas, torch.zeros(1)]).double()


def sample(denoise, x, sigmas):
    levels = [float(s) for s in sigmas]
    for sigma, sigma_next in pairwise(levels):
        x = ddim_step(x, denoise(x, sigma), sigma, sigma_next)
    return x


def test_ddim_inversion_round_trip_converges_with_steps():
    torch.manual_seed(0)
    x0 = (0.3 + DATA_STD * torch.randn(1, 3, 8, 8)).double()
    denoise = gaussian_denoiser(0.3)
    errors = []
    for steps in (25, 100, 400):
        sigmas = schedule(steps)
        path = ddim_inversion(denoise, x0, sigmas)
        assert path.shape == (steps + 1, 3, 8, 8) and torch.equal(path[-1], x0[0])
        errors.append((sample(denoise, path[0:1], sigmas) - x0).abs().max().item())
    # first order: four times the steps, about a quarter of the error
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.5 * errors[1] and errors[2] < 0.2, errors


def test_landing_prediction_lands_on_the_next_latent():
    x, target = torch.randn(1, 4, 4, 4).double(), torch.randn(1, 4, 4, 4).double()
    for sigma, sigma_next in ((14.6, 9.2), (0.5, 0.0)):
        landed = ddim_step(x, landing_prediction(x, target, sigma, sigma_next), sigma, sigma_next)
        torch.testing.assert_close(landed, target)


def test_trajectory_at_scheduled_and_intermediate_levels():
    sigmas = schedule(4)
    path = torch.arange(5.0).double().view(5, 1, 1, 1).expand(5, 1, 2, 2).clone()
    inv = Inversion("direct", sigmas, path, cfg=5.0)
    for i in range(5):
        assert torch.equal(trajectory_at(inv, float(sigmas[i])), path[i])
    between = 0.5 * float(sigmas[1] + sigmas[2])
    torch.testing.assert_close(trajectory_at(inv, between), torch.full((1, 2, 2), 1.5).double())


def test_null_text_retraces_the_path_that_plain_guidance_leaves():
    """With guidance 5 the unconditional branch pulls a plain reconstruction off the cfg-1 path; the
    optimised per-step contexts bring it back."""
    torch.manual_seed(1)
    cond = gaussian_denoiser(0.3)

    def uncond(x, sigma, context):  # the unconditional branch's data mean, per pixel, is what the context encodes
        return gaussian_denoiser(context.reshape(x.shape))(x, sigma)

    x0 = (0.3 + DATA_STD * torch.randn(1, 3, 8, 8)).double()
    sigmas = schedule(20)
    path = ddim_inversion(cond, x0, sigmas)
    null = torch.full((48, 4), -0.5).double()

    def guided(context_of_step):
        levels = [float(s) for s in sigmas]
        x = path[0:1]
        for i, (sigma, sigma_next) in enumerate(pairwise(levels)):
            u = uncond(x, sigma, context_of_step(i))
            x = ddim_step(x, u + 5.0 * (cond(x, sigma) - u), sigma, sigma_next)
        return x

    def guided_prediction(x, sigma, context):
        u = uncond(x, sigma, context)
        return u + 5.0 * (cond(x, sigma) - u)

    plain_error = (guided(lambda i: null) - x0).abs().max().item()
    contexts, final, passes = null_text_inversion(guided_prediction, path, sigmas, null, inner_steps=50,
                                                  learning_rate=0.05)
    tuned_error = (guided(lambda i: contexts[i]) - x0).abs().max().item()
    assert contexts.shape == (20, 48, 4) and passes > 80
    torch.testing.assert_close(final, guided(lambda i: contexts[i]))
    assert plain_error > 0.1 and tuned_error < 0.1 * plain_error, (plain_error, tuned_error)


def flow_gaussian_denoiser(mean):
    """The exact denoiser of data ~ N(mean, DATA_STD^2) per pixel for a rectified-flow model, whose latents are
    x = (1 - sigma) x0 + sigma eps."""
    def denoise(x, sigma, mean=mean):
        keep, var = 1.0 - sigma, DATA_STD**2
        return mean + (x - keep * mean) * (keep * var / (keep**2 * var + sigma**2))
    return denoise


def test_plain_euler_inversion_of_a_rectified_flow_round_trips():
    """Sigmas from 1 to 0 (a flow schedule): the round trip converges at first order, as DDIM inversion does on VP
    models, and the path ends where sampling starts, at the level where the latent is all noise."""
    torch.manual_seed(0)
    x0 = (0.3 + DATA_STD * torch.randn(1, 3, 8, 8)).double()
    denoise = flow_gaussian_denoiser(0.3)
    errors = []
    for steps in (25, 100, 400):
        sigmas = torch.linspace(1.0, 0.0, steps + 1).double()
        path = ddim_inversion(denoise, x0, sigmas, flow=True)
        assert torch.equal(path[-1], x0[0])
        errors.append((sample(denoise, path[0:1], sigmas) - x0).abs().max().item())
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.5 * errors[1] and errors[2] < 0.01, errors
