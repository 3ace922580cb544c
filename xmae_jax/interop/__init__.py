"""Interoperability with the reference PyTorch implementation (github.com/hzhou3/xMAE)."""
from xmae_jax.interop.reference import (ReferenceStateDictError, from_reference_state_dict,
                                        import_checkpoint, to_reference_state_dict)

__all__ = ["from_reference_state_dict", "to_reference_state_dict", "import_checkpoint",
           "ReferenceStateDictError"]
