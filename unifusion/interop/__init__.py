"""Adapters at the edge: other libraries' models, pipelines and formats presented through unifusion's interfaces.

* `unifusion.interop.diffusers` (optional extra `[diffusers]`): noise processes from diffusers scheduler configs,
  diffusers UNets as `Denoiser`s, diffusers pipelines driven by unifusion's samplers, the `diffusers_unet2d` network
  and export of trained models as diffusers pipelines.

Nothing here is imported by `import unifusion`; the CLI and (lazily) the network registry import it.
"""
