"""xmae-jax: JAX/Flax pretraining of ECG+PPG biosignal foundation models (xMAE, M2AE)."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2,<0.11", "jaxlib>=0.10.2,<0.11", "flax==0.12.8", "optax>=0.2.8",
    "orbax-checkpoint==0.12.8", "grain==0.2.18", "array-record==0.8.6", "chex>=0.1.92",
    "ml-collections>=1.1.0", "absl-py>=2.5.1", "numpy>=2.0", "scipy>=1.12",
    "neurokit2>=0.2.13", "wfdb>=4.1", "soundfile>=0.12", "h5py>=3.10", "msgpack>=1.0",
    "pandas>=2.0", "scikit-learn>=1.4", "matplotlib>=3.8", "tensorboardX>=2.6",
    "safetensors>=0.4", "tqdm>=4.66",
]

setup(
    name="xmae-jax",
    version="0.1.0",
    description="JAX/Flax pretraining of ECG+PPG foundation models (xMAE, M2AE) at pod scale",
    packages=find_packages(include=["xmae_jax", "xmae_jax.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=CORE,
    extras_require={
        "tfds": ["tensorflow-datasets==4.9.10"],
        # torch is only for the golden/parity tests and the side-by-side benchmark (CPU build).
        "torch": ["torch==2.13.0"],
        # Apache Beam for `xmae-prepare --runner beam` (2.77 is the newest release and fits the
        # pinned set; it needs protobuf < 7).
        "beam": ["apache-beam>=2.77,<3"],
        "test": ["pytest>=8", "pytest-xdist>=3", "tensorflow-datasets==4.9.10", "torch==2.13.0",
                 "apache-beam>=2.77,<3"],
    },
    entry_points={
        "console_scripts": [
            "xmae-prepare=xmae_jax.prepare:run",
            "xmae-train=xmae_jax.train:run",
            "xmae-import-torch=xmae_jax.import_torch:run",
            "xmae-export=xmae_jax.export:run",
            "xmae-embed=xmae_jax.embed:run",
            "xmae-probe=xmae_jax.probe:run",
            "xmae-compare=xmae_jax.compare:run",
            "xmae-timing=xmae_jax.timing:run",
            "xmae-recon-report=xmae_jax.recon_report:run",
        ]
    },
)
