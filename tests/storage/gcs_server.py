"""Runs gcp-storage-emulator with the two object generation rules of Cloud Storage it lacks:

    python tests/storage/gcs_server.py PORT BUCKET

- a download carries the object's generation (`x-goog-generation`), which TensorStore reads to
  make its conditional writes (Orbax's OCDBT manifest, the workdir lock object);
- an upload or delete with `ifGenerationMatch` is refused (412) unless the object's generation
  is that one (0: the object must not exist), so of two writers racing for the lock object only
  one wins.

Everything else is the emulator as published: in memory, on 127.0.0.1.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> str:
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return "0"


def _precondition(handler, name_of):
  def checked(request, response, storage, *args, **kwargs):
    wanted = (request.query.get("ifGenerationMatch") or [None])[0]
    if wanted is not None:
      bucket = request.params["bucket_name"]
      if _generation(storage, bucket, name_of(request)) != str(wanted):
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    return handler(request, response, storage, *args, **kwargs)

  return checked


def _with_generation(handler):
  def download(request, response, storage, *args, **kwargs):
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if generation != "0":
      response["x-goog-generation"] = generation
    return handler(request, response, storage, *args, **kwargs)

  return download


def _upload_name(request) -> str:
  name = (request.query.get("name") or [None])[0]
  if name is None and isinstance(request.data, dict):
    name = request.data.get("meta", {}).get("name")
  return name or ""


def main(port: int, bucket: str) -> None:
  replace = {
      objects.download: _with_generation(objects.download),
      objects.insert: _precondition(objects.insert, _upload_name),
      objects.delete: _precondition(objects.delete, lambda r: r.params["object_id"]),
  }
  for _, methods in server.HANDLERS:
    for method, fn in methods.items():
      methods[method] = replace.get(fn, fn)
  # The router names insert directly, and `get` calls download for `alt=media`.
  objects.insert, objects.download = replace[objects.insert], replace[objects.download]
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  srv.run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
