"""M2AE's joint fingerprint package (`xmae-export --modality ppg+ecg`): either modality or both
embed into one space, equal to the model's own `fingerprint`; xmae-embed --modalities; the
retrieval command end to end; one-line errors."""

import json

import numpy as np
import pytest

from tests.helpers import datasets
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import export as export_lib
from xmae_jax.evaluation import package as package_lib


def _fingerprints(model, ppg, ecg):
  return {
      "both": np.asarray(model.fingerprint(ppg=ppg, ecg=ecg)),
      "ppg": np.asarray(model.fingerprint(ppg=ppg)),
      "ecg": np.asarray(model.fingerprint(ecg=ecg)),
  }


def test_joint_package_embeds_either_or_both_as_the_model(tiny_m2ae, joint_package):
  import xmae_jax

  model, _ = tiny_m2ae
  ppg, ecg = datasets.paired_windows()
  expected = _fingerprints(model, ppg, ecg)
  enc = xmae_jax.load_encoder(joint_package, batch_size=4)  # two batches, the last padded
  assert enc.modalities == ("ppg", "ecg") and enc.modality == "ppg+ecg"
  got = {
      "both": enc.embed(ppg=ppg, ecg=ecg, fs=100),
      "ppg": enc.embed(ppg=ppg),
      "ecg": enc.embed(ecg=ecg, fs=100),
  }
  for k, z in got.items():
    assert z.shape == (len(ppg), enc.latent_dim) and z.dtype == np.float32, k
    np.testing.assert_allclose(z, expected[k], atol=1e-5, rtol=1e-5, err_msg=k)
  # Prepared windows give the same numbers without preprocessing.
  np.testing.assert_allclose(enc.embed_prepared(ppg=ppg, ecg=ecg), expected["both"], atol=1e-5)
  np.testing.assert_allclose(enc.embed_prepared(ecg=ecg), expected["ecg"], atol=1e-5)
  # The three are different fingerprints (the joint one uses both signals).
  assert not np.allclose(got["both"], got["ppg"], atol=1e-4)
  assert not np.allclose(got["ppg"], got["ecg"], atol=1e-4)


def test_joint_package_round_trip_and_contents(tiny_m2ae, joint_package, m2ae_workdir):
  from safetensors.numpy import load_file

  model, config = tiny_m2ae
  ppg, ecg = datasets.paired_windows(n=3, seed=1)
  in_memory = encoder_lib.from_model(model, config, "ppg+ecg")
  loaded = encoder_lib.load_encoder(joint_package)
  from_workdir = encoder_lib.load_encoder(m2ae_workdir, modality="ppg+ecg")
  assert from_workdir.modalities == ("ppg", "ecg")
  for kw in ({"ppg": ppg, "ecg": ecg}, {"ppg": ppg}, {"ecg": ecg}):
    ref = in_memory.embed_prepared(**kw)
    np.testing.assert_allclose(loaded.embed_prepared(**kw), ref, atol=1e-6)
    np.testing.assert_allclose(from_workdir.embed_prepared(**kw), ref, atol=1e-6)
  info = json.loads((joint_package / "package.json").read_text())
  assert info["format_version"] == package_lib.FORMAT_VERSION == 2
  assert info["modality"] == "ppg+ecg" and info["modalities"] == ["ppg", "ecg"]
  assert info["source"]["step"] == 3 and info["latent_dim"] == 32
  prefixes = {name.split(".")[0] for name in info["tensors"]}
  assert prefixes == {"ppg_encoder", "ecg_encoder", "bottleneck"}  # no decoder
  assert info["param_count"] == encoder_module.count_parameters(
      encoder_module.JointFingerprint(model)
  )
  assert set(load_file(str(joint_package / "encoder.safetensors"))) == set(info["tensors"])
  readme = (joint_package / "README.md").read_text()
  assert "embed(ppg=" in readme and "embed(ecg=" in readme


def test_one_modality_of_a_joint_package_and_single_packages(
    tiny_m2ae, joint_package, m2ae_workdir, tmp_path
):
  model, _ = tiny_m2ae
  ppg, ecg = datasets.paired_windows(n=3, seed=2)
  ppg_only = encoder_lib.load_encoder(joint_package, modality="ppg")
  assert ppg_only.modalities == ("ppg",)
  np.testing.assert_allclose(ppg_only.embed(ppg), np.asarray(model.fingerprint(ppg=ppg)), atol=1e-5)
  with pytest.raises(encoder_module.EncoderError, match="cannot embed ecg"):
    ppg_only.embed(ecg=ecg)
  # A single-modality package: embed(x) and the keyword of its modality mean the same.
  single = export_lib.export_workdir(m2ae_workdir, tmp_path / "ecg", modality="ecg")
  enc = encoder_lib.load_encoder(single)
  assert enc.modalities == ("ecg",)
  np.testing.assert_allclose(enc.embed(ecg), np.asarray(model.fingerprint(ecg=ecg)), atol=1e-5)
  np.testing.assert_array_equal(enc.embed(ecg=ecg), enc.embed(ecg))
  np.testing.assert_array_equal(enc.embed_prepared(ecg=ecg), enc.embed_prepared(ecg))
  with pytest.raises(
      encoder_module.EncoderError, match=r"holds the ecg encoder only: it cannot embed ppg"
  ):
    enc.embed(ppg=ppg)
  with pytest.raises(encoder_module.EncoderError, match="holds the ecg encoder, not ppg\\+ecg"):
    encoder_lib.load_encoder(single, modality="ppg+ecg")


def test_format_1_package_still_loads(tiny_m2ae, m2ae_workdir, tmp_path):
  """A package written before the joint format (version 1, no "modalities") loads as before."""
  model, _ = tiny_m2ae
  ppg, _ = datasets.paired_windows(n=2, seed=3)
  pkg = export_lib.export_workdir(m2ae_workdir, tmp_path / "v1")
  info = json.loads((pkg / "package.json").read_text())
  info["format_version"] = 1
  del info["modalities"]
  (pkg / "package.json").write_text(json.dumps(info))
  enc = encoder_lib.load_encoder(pkg)
  assert enc.modalities == ("ppg",)
  np.testing.assert_allclose(enc.embed(ppg), np.asarray(model.fingerprint(ppg=ppg)), atol=1e-5)


def test_joint_raw_input_is_windowed_per_row(joint_package):
  enc = encoder_lib.load_encoder(joint_package)
  ppg, ecg = datasets.paired_windows(n=2, seed=4)
  # A row of two 10-s windows per modality gives one fingerprint: the mean of its windows'.
  two = {
      "ppg": np.concatenate([ppg[:1], ppg[1:]], axis=1),
      "ecg": np.concatenate([ecg[:1], ecg[1:]], axis=1),
  }
  z = enc.embed(**two, fs=100, clean=False)
  assert z.shape == (1, enc.latent_dim)
  np.testing.assert_allclose(z[0], enc.embed_prepared(ppg=ppg, ecg=ecg).mean(0), atol=1e-5)


def test_joint_bad_inputs(joint_package):
  enc = encoder_lib.load_encoder(joint_package)
  ppg, ecg = datasets.paired_windows(n=3, seed=5)
  with pytest.raises(encoder_lib.EncoderInputError, match="no input: pass ppg=... and/or ecg=..."):
    enc.embed()
  with pytest.raises(encoder_lib.EncoderInputError, match="keyword inputs"):
    enc.embed(ppg)
  with pytest.raises(
      encoder_lib.EncoderInputError, match=r"same windows.*ppg \(3, 1000\), ecg \(2, 1000\)"
  ):
    enc.embed(ppg=ppg, ecg=ecg[:2])
  with pytest.raises(encoder_lib.EncoderInputError, match=r"same windows.*ecg \(3, 900\)"):
    enc.embed(ppg=ppg, ecg=ecg[:, :900])
  with pytest.raises(encoder_lib.EncoderInputError, match="same windows"):
    enc.embed_prepared(ppg=ppg, ecg=ecg[:1])
  with pytest.raises(encoder_lib.EncoderInputError, match="prepared ppg windows must be"):
    enc.embed_prepared(ppg=ppg[:, :900], ecg=ecg[:, :900])


def test_joint_export_of_an_xmae_model_is_one_line(tiny_workdir, tmp_path, capsys):
  from xmae_jax.cli import xmae_export

  assert (
      xmae_export.main(
          ["--workdir", str(tiny_workdir), "--output", str(tmp_path / "p"), "--modality", "ppg+ecg"]
      )
      == 1
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no joint ppg+ecg fingerprint (only M2AE has one)" in err
  assert not (tmp_path / "p").exists()
  with pytest.raises(encoder_module.EncoderError, match="no joint ppg\\+ecg fingerprint"):
    encoder_lib.load_encoder(tiny_workdir, modality="ppg+ecg")


# ---- xmae-embed --modalities and xmae-retrieval --------------------------------------------------


@pytest.fixture(scope="module")
def paired_dataset(tmp_path_factory):
  """12 subjects x 3 segments of paired PPG and ECG."""
  from xmae_jax.data import record as record_lib

  out = tmp_path_factory.mktemp("paired")
  ppg, ecg = datasets.paired_windows(n=36, seed=7)
  splits = {"train": [], "test": []}
  for i in range(36):
    s = i // 3
    rec = record_lib.Record(
        subject_id=f"s{s:02d}",
        segment_id=f"s{s:02d}/{i % 3}",
        source="test",
        ppg=ppg[i],
        ecg=ecg[i],
        quality_ppg=0.9,
        quality_ecg=0.9,
        meta={"age": 30.0 + s},
        labels={},
    )
    splits["test" if s >= 8 else "train"].append(rec)
  return datasets.write_dataset(out, splits)


def test_embed_with_modalities(joint_package, paired_dataset, tmp_path):
  from xmae_jax.cli import xmae_embed
  from xmae_jax.evaluation import embed as embed_lib

  enc = encoder_lib.load_encoder(joint_package)
  stored = datasets.stored_windows(paired_dataset)
  files = {}
  for flag in ("ppg", "ecg", "ppg,ecg"):
    files[flag] = tmp_path / f"{flag.replace(',', '_')}.npz"
    assert (
        xmae_embed.main(
            [
                "--encoder",
                str(joint_package),
                "--input",
                str(paired_dataset),
                "--output",
                str(files[flag]),
                "--modalities",
                flag,
            ]
        )
        == 0
    )
  default = tmp_path / "default.npz"  # a ppg+ecg package embeds both by default
  assert (
      xmae_embed.main(
          [
              "--encoder",
              str(joint_package),
              "--input",
              str(paired_dataset),
              "--output",
              str(default),
          ]
      )
      == 0
  )
  a = {k: embed_lib.load_embeddings(f) for k, f in files.items()}
  assert a["ppg"]["info"]["modalities"] == ["ppg"] and a["ecg"]["info"]["modalities"] == ["ecg"]
  assert a["ppg,ecg"]["info"]["modalities"] == ["ppg", "ecg"]
  assert a["ppg,ecg"]["info"]["modality"] == "ppg+ecg"
  np.testing.assert_array_equal(
      embed_lib.load_embeddings(default)["embeddings"], a["ppg,ecg"]["embeddings"]
  )
  ids = list(a["ppg"]["segment_ids"])
  assert all(list(x["segment_ids"]) == ids for x in a.values()) and len(ids) == 36
  ppg = np.stack([stored[i]["ppg"] for i in ids])
  ecg = np.stack([stored[i]["ecg"] for i in ids])
  np.testing.assert_allclose(a["ppg"]["embeddings"], enc.embed_prepared(ppg=ppg), atol=1e-5)
  np.testing.assert_allclose(a["ecg"]["embeddings"], enc.embed_prepared(ecg=ecg), atol=1e-5)
  np.testing.assert_allclose(
      a["ppg,ecg"]["embeddings"], enc.embed_prepared(ppg=ppg, ecg=ecg), atol=1e-5
  )


def test_embed_modalities_errors(joint_package, tiny_package, paired_dataset, tmp_path, capsys):
  from xmae_jax.cli import xmae_embed

  out = tmp_path / "o.npz"
  base = ["--input", str(paired_dataset), "--output", str(out)]
  assert xmae_embed.main(["--encoder", str(tiny_package), *base, "--modalities", "ppg,ecg"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "holds the ppg encoder, not ppg+ecg" in err
  assert xmae_embed.main(["--encoder", str(joint_package), *base, "--modalities", "ppg,abp"]) == 1
  assert "expected ppg, ecg or ppg,ecg" in capsys.readouterr().err
  assert not out.exists()


def test_retrieval_cli_on_a_dataset(joint_package, paired_dataset, tmp_path, capsys):
  from xmae_jax.cli import xmae_retrieval
  from xmae_jax.evaluation import embed as embed_lib
  from xmae_jax.evaluation import retrieval

  out = tmp_path / "ret"
  assert (
      xmae_retrieval.main(
          [
              "--encoder",
              str(joint_package),
              "--input",
              str(paired_dataset),
              "--query",
              "ecg",
              "--gallery",
              "ppg",
              "--gallery-size",
              "5",
              "--seed",
              "2",
              "--bootstrap",
              "40",
              "--output-dir",
              str(out),
          ]
      )
      == 0
  )
  printed = capsys.readouterr().out.strip().splitlines()
  assert len(printed) == 1
  line = json.loads(printed[0])
  result = json.loads((out / "results.json").read_text())
  assert line["top1"] == result["top1"] and line["chance_top1"] == 0.2
  assert result["n_queries"] == 36 and result["n_subjects"] == 12 and result["chance_top5"] == 1.0
  # The command scores the ECG-alone fingerprints against the PPG-alone ones of the same windows.
  enc = encoder_lib.load_encoder(joint_package)
  segs = embed_lib.read_segments(paired_dataset, ("ppg", "ecg"), contract=enc.contract)
  expected = retrieval.retrieval_scores(
      enc.embed_prepared(ecg=segs.signals["ecg"]),
      enc.embed_prepared(ppg=segs.signals["ppg"]),
      segs.subject_ids,
      gallery_size=5,
      seed=2,
      n_bootstrap=40,
  )
  assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
  table = (out / "table.md").read_text()
  assert "| ecg | ppg | 5 |" in table and "0.200" in table
  # Too few subjects for the gallery, a package without ECG: one line each.
  assert (
      xmae_retrieval.main(
          [
              "--encoder",
              str(joint_package),
              "--input",
              str(paired_dataset),
              "--gallery-size",
              "13",
              "--output-dir",
              str(tmp_path / "x"),
          ]
      )
      == 1
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "gallery size 13 needs windows of at least 13 subjects" in err


def test_retrieval_and_embed_on_a_wfdb_folder(
    joint_package, tiny_package, physionet_dir, tmp_path, capsys
):
  """Two challenge2015 records (two subjects) in a folder: embed both modalities, retrieve."""
  from xmae_jax.cli import xmae_embed
  from xmae_jax.cli import xmae_retrieval
  from xmae_jax.evaluation import embed as embed_lib

  folder = tmp_path / "records"
  folder.mkdir()
  for name in ("a103l.hea", "a103l.mat", "v102s.hea", "v102s.dat"):
    (folder / name).symlink_to(physionet_dir / name)
  emb = tmp_path / "wfdb.npz"
  assert (
      xmae_embed.main(
          [
              "--encoder",
              str(joint_package),
              "--input",
              str(folder),
              "--output",
              str(emb),
              "--modalities",
              "ppg,ecg",
          ]
      )
      == 0
  )
  a = embed_lib.load_embeddings(emb)
  assert a["info"]["modalities"] == ["ppg", "ecg"] and a["info"]["source"] == "wfdb"
  assert len(set(a["subject_ids"])) == 2 and 40 <= len(a["embeddings"]) <= 63
  capsys.readouterr()
  assert (
      xmae_retrieval.main(
          [
              "--encoder",
              str(joint_package),
              "--input",
              str(folder),
              "--query",
              "ppg",
              "--gallery",
              "ecg",
              "--gallery-size",
              "2",
              "--bootstrap",
              "20",
              "--output-dir",
              str(tmp_path / "r"),
          ]
      )
      == 0
  )
  line = json.loads(capsys.readouterr().out)
  assert line["n_subjects"] == 2 and line["n_queries"] == len(a["embeddings"])
  assert line["chance_top1"] == 0.5 and line["query"] == "ppg"
  # A single-modality package cannot retrieve across modalities: one line.
  assert (
      xmae_retrieval.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(folder),
              "--gallery-size",
              "2",
              "--output-dir",
              str(tmp_path / "x"),
          ]
      )
      == 1
  )
  assert "holds the ppg encoder, not ppg+ecg" in capsys.readouterr().err
