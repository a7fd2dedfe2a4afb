"""agedi_jax: functional JAX generative diffusion of atomistic structures."""

__version__ = "0.1.0"
