"""ddlab: a course in discrete diffusion, from a 3-state Markov chain to SEDD on text8.

The library computes everything exactly on toy state spaces, and the same functions drive the
neural model. Where each piece is introduced:

=====================  ==========================================================  ======
module                 what                                                        lesson
=====================  ==========================================================  ======
rate_matrices          RateMatrix, Uniform, Absorbing and their per-token methods  1, 3, 5
schedules              LogLinear, Geometric; masking schedules Polynomial, Cosine, 1, 10
                       make_schedule
exact                  marginal, concrete_score, reverse_rate_matrix, posterior,   1, 2
                       tweedie_denoiser
paths                  exact Gillespie paths, forward and reverse                  1, 2
widgets                the logic behind the lesson sliders (WIDGETS registry)      1, 2
course                 setup(): seed, figure style, the lesson's size knob          all
plotting               the course figure style and save_figure                     all
losses                 SE, ISE, DSE, CSM and their exact floors; the one Monte     3, 4
                       Carlo DWDSE and its stratified time sampler
toy                    toy score networks and their training loop                  4
sampling               exact reverse simulation, Euler and Tweedie tau-leaping;    5, 10, 11
                       MDLM / ReMDM, confidence order, predictor-corrector,
                       temperature, the cache, Gumbel-max; each sampler's exact law
likelihood             nll_bound (DWDSE + prior) and exact NLL                     6
sequences              product spaces, Hamming-1 ratios, exact_score_fn, infill   7
mdlm                   masked diffusion as a weighted cross-entropy; its bound     8, 10
                       exact in x_t and the variance of its estimate
discrete_time          D3PM's T-step bound against the continuous one              10
text                   the text world: data, model, config, checkpoint, train,      9
                       evaluate, generate (text8, the transformer, training,
                       bits/char, generation and infilling)
train, evaluate,       CLI aliases of ddlab.text.train, .evaluate, .generate        9
sample
=====================  ==========================================================  ======
"""

from . import (course, discrete_time, exact, likelihood, losses, mdlm, paths, plotting,
               rate_matrices, sampling, schedules, sequences, text, toy, widgets)
from ._checks import skip_value_checks
from .text.data import load_corpus, text8_normalize
from .text.model import DiffusionTransformer, ModelConfig
from .exact import (concrete_score, kl_divergence, marginal, posterior, reverse_rate_matrix,
                    tweedie_denoiser)
from .likelihood import exact_nll, nll_bound
from .paths import gillespie, reverse_gillespie, reverse_kernel, reverse_ode, reverse_paths
from .plotting import save_figure
from .rate_matrices import Absorbing, RateMatrix, Uniform, sample_categorical
from .schedules import Cosine, Geometric, LogLinear, Polynomial, make_schedule
from .sequences import (condition, exact_reverse_kernel, exact_score_fn, factorisation_kl,
                        joint_posterior, markov_toy, parity_toy, product_marginal, words_toy)

__version__ = "0.1.0"

__all__ = [
    "RateMatrix", "Uniform", "Absorbing", "sample_categorical",
    "LogLinear", "Geometric", "Polynomial", "Cosine", "make_schedule",
    "marginal", "concrete_score", "reverse_rate_matrix", "posterior", "tweedie_denoiser",
    "kl_divergence",
    "gillespie", "reverse_kernel", "reverse_paths", "reverse_gillespie", "reverse_ode",
    "save_figure",
    "nll_bound", "exact_nll",
    "exact_score_fn", "product_marginal", "joint_posterior", "exact_reverse_kernel",
    "factorisation_kl", "condition", "words_toy", "markov_toy", "parity_toy",
    "load_corpus", "text8_normalize", "DiffusionTransformer", "ModelConfig",
    "skip_value_checks",
]
