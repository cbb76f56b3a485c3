"""unifusion: variance-preserving and variance-exploding diffusion models as one system.

Every process is `x_t = alpha(t) x0 + sigma(t) eps`; every model is presented as a VE-coordinate denoiser
`D(x~, sigma~)`; every sampler is a plain function of such a denoiser and a descending sigma grid.
See DESIGN.md (conventions) and README.md (the map of modules).
"""
from .processes import DDPM, EDM, PROCESSES, VE, VP, NoiseProcess, RectifiedFlow, SubVP, VPCosine, get_process
from .parametrization import Denoiser, ProcessModel, edm_precond
from .oracles import EmpiricalData, GaussianMixture, eight_gaussians, grid_gaussians, mixture_64d

__version__ = "0.1.0"
