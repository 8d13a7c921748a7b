"""ddlab: a course in discrete diffusion, from a 3-state Markov chain to SEDD on text8.

The library computes everything exactly on toy state spaces, and the same functions drive the
neural model. Where each piece is introduced:

=====================  ==========================================================  ======
module                 what                                                        lesson
=====================  ==========================================================  ======
rate_matrices          RateMatrix, Uniform, Absorbing and their per-token methods  1, 3, 5
schedules              LogLinear, Geometric                                        1
exact                  marginal, concrete_score, reverse_rate_matrix, posterior,   1, 2
                       tweedie_denoiser
paths                  exact Gillespie paths, forward and reverse                  1, 2
plotting               the course figure style and save_figure                     all
losses                 SE, ISE, DSE, DWDSE, CSM and their exact floors             3
toy                    toy score networks and their training loop                  4
sampling               exact reverse simulation, Euler and Tweedie tau-leaping     5
likelihood             nll_bound (DWDSE + prior) and exact NLL                     6
sequences              product spaces, Hamming-1 ratios, exact_score_fn, infill   7
mdlm                   masked diffusion as a weighted cross-entropy                8
data, model, train,    text8, the diffusion transformer, training, evaluation,    9
evaluate, sample       sampling and infilling
=====================  ==========================================================  ======
"""

from . import course, exact, paths, plotting, rate_matrices, schedules, sequences
from .exact import concrete_score, marginal, posterior, reverse_rate_matrix, tweedie_denoiser
from .paths import gillespie
from .plotting import save_figure
from .rate_matrices import Absorbing, RateMatrix, Uniform, sample_categorical
from .schedules import Geometric, LogLinear
from .sequences import exact_score_fn

__version__ = "0.1.0"

__all__ = [
    "RateMatrix", "Uniform", "Absorbing", "sample_categorical",
    "LogLinear", "Geometric",
    "marginal", "concrete_score", "reverse_rate_matrix", "posterior", "tweedie_denoiser",
    "gillespie", "save_figure", "exact_score_fn",
]
