"""unifusion: variance-preserving and variance-exploding diffusion models as one system.

Every process is `x_t = alpha(t) x0 + sigma(t) eps`; every model is presented as a VE-coordinate denoiser
`D(x~, sigma~)`; every sampler is a plain function of such a denoiser and a descending sigma grid.
The folder layout is the architecture: processes -> parametrization -> losses / nets / data -> train ->
samplers / consistency -> likelihood / metrics / plots -> cli. README.md maps modules to docs.
Heavy pieces (`metrics`, `plots`, `train`, `cli`) are imported on demand.
"""
from . import grids, samplers, transforms
from .consistency import ConsistencyFunction, sample_consistency
from .data import get_dataset, toy_2d
from .likelihood import bits_per_dim, log_likelihood
from .losses import LOSSES, build_loss
from .nets import MLP, UNet, build_net
from .oracles import EmpiricalData, GaussianMixture, eight_gaussians, grid_gaussians, mixture_64d
from .parametrization import Denoiser, ProcessModel, edm_precond
from .processes import DDPM, EDM, PROCESSES, VE, VP, NoiseProcess, RectifiedFlow, SubVP, VPCosine, get_process
from .samplers import DEFAULT_SAMPLER, RECOMMENDED, SAMPLERS, get_sampler

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "NoiseProcess", "DDPM", "VP", "VPCosine", "SubVP", "VE", "EDM", "RectifiedFlow", "PROCESSES", "get_process",
    "Denoiser", "ProcessModel", "edm_precond",
    "GaussianMixture", "EmpiricalData", "eight_gaussians", "grid_gaussians", "mixture_64d",
    "SAMPLERS", "RECOMMENDED", "DEFAULT_SAMPLER", "get_sampler", "grids", "samplers", "transforms",
    "LOSSES", "build_loss", "MLP", "UNet", "build_net", "get_dataset", "toy_2d",
    "ConsistencyFunction", "sample_consistency", "log_likelihood", "bits_per_dim",
]
