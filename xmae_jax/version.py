"""The package version: one line that setup.py reads as text and every layer imports.

setup.py reads it without importing the package (no dependency is installed yet then); modules
import `__version__` from here, not from `xmae_jax`, so no layer runs the package's top level.
"""

__version__ = "0.1.0"
