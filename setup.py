"""xmae-jax: JAX/Flax pretraining of ECG+PPG biosignal foundation models (xMAE, M2AE)."""

import re
from pathlib import Path

from setuptools import find_packages
from setuptools import setup

HERE = Path(__file__).resolve().parent
# One owner of the version: xmae_jax/version.py (xmae_jax.__version__, what --version prints),
# read as text: the package cannot be imported before its dependencies are installed.
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "xmae_jax" / "version.py").read_text(), re.M
).group(1)

# Ranges, not pins: each admits the tested 3.11 set (constraints.txt) and the tested current set
# for 3.12/3.13 (constraints-current.txt). The upper caps sit at the next minor line because
# flax/jax/orbax/grain break across minor bumps; widen one only after the suite passes on it.
# CORE is what loading a package and embedding needs (`pip install xmae-jax`): the encoder
# (flax, which brings optax and orbax), the preprocessing (neurokit2, scipy), the raw-input
# readers (wfdb, soundfile), prepared datasets (array-record) and the probes (scikit-learn).
CORE = [
    "jax>=0.10.2,<0.13",
    "jaxlib>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "array-record>=0.8.6,<0.9",
    "chex>=0.1.92",
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.0",
    "scipy>=1.12",
    "neurokit2>=0.2.13",
    "wfdb>=4.1",
    "soundfile>=0.12",
    "msgpack>=1.0",
    "pandas>=2.0",
    "scikit-learn>=1.4",
    "matplotlib>=3.8",
    "safetensors>=0.4",
    "tqdm>=4.66",
    # jax.export serialization (the StableHLO artifact of xmae_jax.interop.stablehlo)
    "flatbuffers>=24.3",
]
# gs:// paths (workdirs, datasets, packages): etils.epath reaches them through gcsfs; Orbax's
# TensorStore has its own client. Part of the train extra: pods keep their runs in buckets.
GCS = "gcsfs>=2025.9"
# Training and preparation beyond that (`.[train]`): the Grain input pipeline, TensorBoard
# logs, PulseDB's MATLAB v7.3 (HDF5) files, gs:// paths (GCS below).
TRAIN = ["grain>=0.2.18,<0.3", "tensorboardX>=2.6", "h5py>=3.10", GCS]
# The golden/parity tests and the side-by-side benchmark need torch (CPU build). Only 3.11 gets
# it from the test extra: that is where the CPU wheel is pinned (constraints.txt); on 3.12+ the
# index's default torch is the multi-GB CUDA build, and the torch tests skip without it.
# `.[torch]` still installs it on any Python for whoever wants it.
TORCH = "torch>=2.13"
BEAM = "apache-beam>=2.77,<3"
# EDF/EDF+ recordings (`xmae-prepare --source edf`): most wearable and sleep recordings.
EDF = "pyedflib>=0.1.38"
# Weights & Biases for `train.wandb.project` (off by default; offline unless WANDB_MODE is set).
WANDB = "wandb>=0.17"
LIBTPU = "libtpu>=0.0.42"
# ONNX export of a package (xmae-export --onnx): jax2onnx 0.13 is the newest line that installs
# beside jax 0.10.2 (it resolves beside constraints-current.txt's jax 0.12 too). In the test
# extra as well, so that the suite checks the ONNX model's numbers (tests/interop/test_onnx.py).
ONNX = ["jax2onnx>=0.13,<0.14", "onnxruntime>=1.24"]

setup(
    name="xmae-jax",
    version=VERSION,
    description="JAX/Flax pretraining of ECG+PPG foundation models (xMAE, M2AE) at pod scale",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="xmae-jax contributors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
    # The model configs: configs/*.py stays the source; an installed package carries them as
    # xmae_jax.configs (so `--config xmae:tiny` works without a checkout; config_lib resolves it).
    packages=find_packages(include=["xmae_jax", "xmae_jax.*"]) + ["xmae_jax.configs"],
    package_dir={"xmae_jax.configs": "configs"},
    python_requires=">=3.11,<3.14",
    install_requires=CORE,
    extras_require={
        "tfds": ["tensorflow-datasets>=4.9.10"],
        "torch": [TORCH],
        "onnx": ONNX,
        # Apache Beam for `xmae-prepare --runner beam` (2.77 fits the pinned set; it needs
        # protobuf < 7).
        "beam": [BEAM],
        "edf": [EDF],
        "wandb": [WANDB],
        "gcs": [GCS],
        "train": TRAIN,
        # The suite trains, so the test extra holds the training extra too.
        # libtpu: xmae-compile's TPU programs compiled on CPU (tests/training/test_compile_tpu.py);
        # pinned for 3.11 only, where it matches jax 0.10.2 (jax[tpu]'s own pin); elsewhere those
        # tests skip. gcp-storage-emulator: the local Cloud Storage server of tests/storage.
        # ONNX: tests/interop/test_onnx.py (onnxruntime runs the exported model).
        # ruff, pyink and mypy: the static checks launch/test.sh runs first (settings in
        # pyproject.toml).
        "test": [
            *TRAIN,
            "pytest>=8",
            "pytest-xdist>=3",
            "ruff>=0.17",
            "mypy>=2.4",
            "pyink>=26.5",
            "tensorflow-datasets>=4.9.10",
            BEAM,
            EDF,
            *ONNX,
            "gcp-storage-emulator>=2024.8",
            f'{TORCH}; python_version < "3.12"',
            f'{LIBTPU}; python_version < "3.12"',
        ],
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
