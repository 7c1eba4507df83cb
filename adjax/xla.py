"""XLA settings adjax applies before JAX starts its backends (the CLI calls `configure()` first).

XLA:CPU in jaxlib 0.10 hands convolutions, and chains of convolution, bias, ReLU and pooling, to
YNNPACK library fusions ("__ynn_fusion"). On the 2-core AMD EPYC (Zen 4, AVX-512) these ran
3-6x slower than XLA's own convolution thunks for EfficientAD's layers (the 256->768 4x4
convolution on 59x59 at batch 1: 630 ms against 110 ms), one EfficientAD-S training step took
13.8 s against 5.1 s without them (256 px, batch 1, float32, same machine load), and the teacher
statistics of EfficientAD's init (a lax.map of teacher forwards) took 1.8 s for 4 images with
the flags, and had not finished after 10 minutes without them (on a busier machine).
`CPU_FLAGS` keeps YNNPACK for single matrix products only (`individual_dot`, one of the fusion
types XLA enables by default).

XLA_FLAGS is read once, when the first backend starts; an unknown flag there aborts the
process, so the flags are added only for the jaxlib versions they were checked on
(`VERIFIED_JAXLIB`), and never over a value the user set.
"""

import importlib.metadata
import os
from collections.abc import MutableMapping

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}
VERIFIED_JAXLIB = ("0.10.",)


def with_flags(xla_flags: str, flags: dict[str, str]) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each of `flags` added unless it names it already."""
    given = {part.split("=", 1)[0].lstrip("-") for part in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in flags.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def configure(environ: MutableMapping[str, str] | None = None,
              jaxlib_version: str | None = None) -> str:
    """Adds `CPU_FLAGS` to XLA_FLAGS in `environ` (default: this process's) when the installed
    jaxlib is one they were checked on; returns the resulting XLA_FLAGS. Call it before JAX
    runs anything (importing jax is fine)."""
    environ = os.environ if environ is None else environ
    version = jaxlib_version or importlib.metadata.version("jaxlib")
    current = environ.get("XLA_FLAGS", "")
    if version.startswith(VERIFIED_JAXLIB):
        current = with_flags(current, CPU_FLAGS)
        environ["XLA_FLAGS"] = current
    return current
