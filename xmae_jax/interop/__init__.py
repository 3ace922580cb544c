"""Interoperability with other frameworks.

  reference      the xMAE reference PyTorch implementation's state dict (github.com/hzhou3/xMAE)
                 <-> our parameters (needs JAX)
  torch_encoder  an exported encoder package as a pure-PyTorch module, without JAX
  stablehlo      an exported encoder package's embedding as a serialized StableHLO artifact

The reference names below are loaded on first use, so that `import xmae_jax.interop.torch_encoder`
imports no JAX.
"""

_REFERENCE = (
    "from_reference_state_dict",
    "to_reference_state_dict",
    "import_checkpoint",
    "ReferenceStateDictError",
)

__all__ = list(_REFERENCE)


def __getattr__(name):
  if name in _REFERENCE:
    # On first use: reference loads JAX, torch_encoder must import without it.
    from xmae_jax.interop import reference

    return getattr(reference, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
