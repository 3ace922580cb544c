"""The user-error base class."""

from xmae_jax import errors


def test_user_error_is_a_value_error():
  assert issubclass(errors.XmaeError, ValueError)
