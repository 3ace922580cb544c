"""The user-error base class, and the one reading of a write the storage refused."""

import errno
import os

from xmae_jax import errors


def test_user_error_is_a_value_error():
  assert issubclass(errors.XmaeError, ValueError)


def test_storage_reason_reads_the_oserror_or_the_text_a_library_wrapped_it_in():
  direct = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert errors.storage_reason(direct) == "no space left on device"
  assert errors.storage_reason(direct, system_text=True) == "No space left on device"
  try:
    try:
      raise OSError(errno.EIO, os.strerror(errno.EIO))
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as wrapped:
    assert errors.storage_reason(wrapped) == "input/output error"
  tensorstore = ValueError('Failed writing "d/0": Read-only file system [tensorstore_spec=...]')
  assert errors.storage_reason(tensorstore, system_text=True) == "Read-only file system"
  assert errors.storage_reason(ValueError("shape mismatch")) is None
  assert errors.storage_reason(OSError(errno.ENOENT, "No such file or directory")) is None
