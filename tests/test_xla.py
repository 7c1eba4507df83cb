"""adjax.xla: the XLA_FLAGS the CLI sets before JAX starts, and that they act on this jaxlib."""

import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

from adjax import xla

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_flags_are_added_once_and_never_over_the_users():
    flag = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert xla.with_flags("", xla.CPU_FLAGS) == flag
    assert xla.with_flags("--xla_dump_to=/d", xla.CPU_FLAGS) == f"--xla_dump_to=/d {flag}"
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla.with_flags(mine, xla.CPU_FLAGS) == mine
    assert xla.with_flags(flag, xla.CPU_FLAGS) == flag


def test_configure_only_on_checked_jaxlib_versions():
    env = {"XLA_FLAGS": "--xla_dump_to=/d"}
    assert "ynn" in xla.configure(env, jaxlib_version="0.10.2") and "ynn" in env["XLA_FLAGS"]
    env = {}
    assert xla.configure(env, jaxlib_version="0.11.0") == "" and "XLA_FLAGS" not in env


_PROBE = """
from adjax import xla
if {configure}:
    xla.configure()
import jax, jax.numpy as jnp
dn = ("NHWC", "HWIO", "NHWC")
def f(x, w1, w2):
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, w1, (1, 1), "VALID", dimension_numbers=dn))
    return jax.lax.conv_general_dilated(y, w2, (1, 1), "VALID", dimension_numbers=dn)
args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, 64, 64, 32), (4, 4, 32, 64),
                                                        (3, 3, 64, 64))]
print("__ynn_fusion" in jax.jit(f).lower(*args).compile().as_text())
"""


@pytest.mark.skipif(not importlib.metadata.version("jaxlib").startswith(xla.VERIFIED_JAXLIB),
                    reason="the flags are checked on other jaxlib versions")
def test_the_flags_keep_convolutions_out_of_ynnpack():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    seen = [subprocess.run([sys.executable, "-c", _PROBE.format(configure=c)], env=env,
                           capture_output=True, text=True, check=True, timeout=300).stdout.strip()
            for c in (False, True)]
    assert seen == ["True", "False"]  # YNNPACK takes the convolutions unless configured
