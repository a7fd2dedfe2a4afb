"""agedi_jax: functional JAX generative diffusion of atomistic structures.

Set ``AGEDI_JAX_CACHE=/path`` to enable JAX's persistent compilation cache for any use of
the package (the command line enables ``~/.cache/agedi_jax/xla`` by default).
"""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("AGEDI_JAX_CACHE", "").lower() not in ("", "0", "off", "none"):
    import jax as _jax

    if not _jax.config.jax_compilation_cache_dir:
        _jax.config.update("jax_compilation_cache_dir", _os.environ["AGEDI_JAX_CACHE"])
        _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
