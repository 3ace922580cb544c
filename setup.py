"""xmae-jax: JAX/Flax pretraining of ECG+PPG biosignal foundation models (xMAE, M2AE)."""
from setuptools import find_packages, setup

# Ranges, not pins: each admits the tested 3.11 set (constraints.txt) and the tested current set
# for 3.12/3.13 (constraints-current.txt). The upper caps sit at the next minor line because
# flax/jax/orbax/grain break across minor bumps; widen one only after the suite passes on it.
CORE = [
    "jax>=0.10.2,<0.13", "jaxlib>=0.10.2,<0.13", "flax>=0.12.8,<0.13", "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13", "grain>=0.2.18,<0.3", "array-record>=0.8.6,<0.9",
    "chex>=0.1.92", "ml-collections>=1.1.0", "absl-py>=2.5.1", "numpy>=2.0", "scipy>=1.12",
    "neurokit2>=0.2.13", "wfdb>=4.1", "soundfile>=0.12", "h5py>=3.10", "msgpack>=1.0",
    "pandas>=2.0", "scikit-learn>=1.4", "matplotlib>=3.8", "tensorboardX>=2.6",
    "safetensors>=0.4", "tqdm>=4.66",
]
# The golden/parity tests and the side-by-side benchmark need torch (CPU build). Only 3.11 gets
# it from the test extra: that is where the CPU wheel is pinned (constraints.txt); on 3.12+ the
# index's default torch is the multi-GB CUDA build, and the torch tests skip without it.
# `.[torch]` still installs it on any Python for whoever wants it.
TORCH = "torch>=2.13"
BEAM = "apache-beam>=2.77,<3"
LIBTPU = "libtpu>=0.0.42"

setup(
    name="xmae-jax",
    version="0.1.0",
    description="JAX/Flax pretraining of ECG+PPG foundation models (xMAE, M2AE) at pod scale",
    packages=find_packages(include=["xmae_jax", "xmae_jax.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=CORE,
    extras_require={
        "tfds": ["tensorflow-datasets>=4.9.10"],
        "torch": [TORCH],
        # Apache Beam for `xmae-prepare --runner beam` (2.77 fits the pinned set; it needs
        # protobuf < 7).
        "beam": [BEAM],
        # libtpu: xmae-compile's TPU programs compiled on CPU (tests/training/test_compile_tpu.py);
        # pinned for 3.11 only, where it matches jax 0.10.2 (jax[tpu]'s own pin); elsewhere those
        # tests skip.
        "test": ["pytest>=8", "pytest-xdist>=3", "tensorflow-datasets>=4.9.10", BEAM,
                 f'{TORCH}; python_version < "3.12"', f'{LIBTPU}; python_version < "3.12"'],
    },
    entry_points={
        "console_scripts": [
            "xmae-prepare=xmae_jax.cli.xmae_prepare:main",
            "xmae-train=xmae_jax.cli.xmae_train:main",
            "xmae-import-torch=xmae_jax.cli.xmae_import_torch:main",
            "xmae-export=xmae_jax.cli.xmae_export:main",
            "xmae-embed=xmae_jax.cli.xmae_embed:main",
            "xmae-probe=xmae_jax.cli.xmae_probe:main",
            "xmae-compare=xmae_jax.cli.xmae_compare:main",
            "xmae-timing=xmae_jax.cli.xmae_timing:main",
            "xmae-recon-report=xmae_jax.cli.xmae_recon_report:main",
            "xmae-retrieval=xmae_jax.cli.xmae_retrieval:main",
            "xmae-compile=xmae_jax.cli.xmae_compile:main",
        ]
    },
)
