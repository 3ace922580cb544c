"""Cross-modal retrieval with M2AE's fingerprints: does a window's ECG fingerprint find its own
PPG fingerprint (or the other way round) among other subjects' windows?

For each query window i (its fingerprint from the `query` modality alone), the gallery is its
own fingerprint from the `gallery` modality alone plus N-1 distractors: the `gallery`-modality
fingerprints of one window each from N-1 other subjects, the subjects and their windows drawn at
random (seeded) for every query. Similarity is cosine; the rank of the own partner is the number
of distractors at least as similar (ties count against the query). top-1 = rank 0, top-5 =
rank < 5; chance is 1/N and min(5, N)/N. Queries are not independent within a subject, so the
95% CIs resample subjects (probe_metrics.subject_bootstrap).

Data: a prepared dataset or a folder of WFDB records (or a CSV/NPZ file), read and windowed as
xmae-embed reads them (embed.read_segments); windows need both modalities. Outputs in OUT_DIR:
results.json and table.md (written through evaluation/report.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import report

TOP_K = (1, 5)
_CHUNK = 2048  # queries scored at once (bounds the (queries, N, latent) gather)


class RetrievalError(XmaeError):
  """A retrieval that cannot run as asked (too few subjects, same query and gallery modality)."""


def draw_distractors(subjects: Sequence[str], gallery_size: int, seed: int = 0) -> np.ndarray:
  """(n, gallery_size - 1) row indices: for each row, one random window from each of
  gallery_size - 1 distinct subjects other than its own."""
  subjects = np.asarray(subjects).astype(str)
  names, subject_of = np.unique(subjects, return_inverse=True)
  n, n_subjects, k = len(subjects), len(names), int(gallery_size) - 1
  check_gallery_size(gallery_size, n_subjects)
  rng = np.random.default_rng(seed)
  order = np.argsort(subject_of, kind="stable")  # rows grouped by subject
  counts = np.bincount(subject_of, minlength=n_subjects)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  out = np.empty((n, k), np.int64)
  for lo in range(0, n, _CHUNK):
    hi = min(n, lo + _CHUNK)
    # k distinct other subjects per row: the k smallest of random keys, the own subject's last.
    keys = rng.random((hi - lo, n_subjects))
    keys[np.arange(hi - lo), subject_of[lo:hi]] = np.inf
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
    pick = (rng.random(chosen.shape) * counts[chosen]).astype(np.int64)
    out[lo:hi] = order[starts[chosen] + pick]
  return out


def check_gallery_size(gallery_size: int, n_subjects: int, where: str = "the data") -> None:
  if gallery_size < 2:
    raise RetrievalError(
        f"gallery size {gallery_size}: must be at least 2 (the own window and " "one other)"
    )
  if n_subjects < gallery_size:
    raise RetrievalError(
        f"gallery size {gallery_size} needs windows of at least {gallery_size} "
        f"subjects (the query's and {gallery_size - 1} others); {where} has "
        f"{n_subjects}"
    )


def partner_ranks(query: np.ndarray, gallery: np.ndarray, distractors: np.ndarray) -> np.ndarray:
  """(n,) rank of row i's own gallery item among itself and `distractors[i]` by cosine
  similarity to query row i: the number of distractors at least as similar (0 = nearest)."""
  q, g = _unit(query), _unit(gallery)
  own = np.sum(q * g, axis=1)
  ranks = np.empty(len(q), np.int64)
  for lo in range(0, len(q), _CHUNK):
    hi = min(len(q), lo + _CHUNK)
    sims = np.einsum("nd,nkd->nk", q[lo:hi], g[distractors[lo:hi]])
    ranks[lo:hi] = np.sum(sims >= own[lo:hi, None], axis=1)
  return ranks


def _unit(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float64)
  if z.ndim != 2 or not np.all(np.isfinite(z)):
    raise RetrievalError(f"fingerprints must be finite (n, latent), got shape {z.shape}")
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _rate_ci(hits: np.ndarray, subjects: np.ndarray, n_bootstrap: int, seed: int) -> list[float]:
  """Subject-bootstrap 95% CI of a hit rate, over probe's one subject-resampling loop."""
  hits = hits.astype(np.float64)
  draws = [
      hits[rows].mean() for rows in probe_metrics.subject_resamples(subjects, n_bootstrap, seed)
  ]
  lo, hi = np.percentile(draws, [2.5, 97.5])
  return [float(lo), float(hi)]


def retrieval_scores(
    query: np.ndarray,
    gallery: np.ndarray,
    subjects: Sequence[str],
    *,
    gallery_size: int,
    seed: int = 0,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
  """Top-1/top-5 retrieval of each row's own `gallery` row among gallery_size items, with
  chance levels and subject-bootstrap CIs. Row i of `query` and of `gallery` are the same window."""
  query, gallery = np.asarray(query), np.asarray(gallery)
  subjects = np.asarray(subjects).astype(str)
  if query.shape != gallery.shape or len(subjects) != len(query):
    raise RetrievalError(
        f"query {query.shape}, gallery {gallery.shape} and {len(subjects)} "
        "subjects must have one row per window"
    )
  ranks = partner_ranks(query, gallery, draw_distractors(subjects, gallery_size, seed))
  out: dict[str, Any] = {
      "gallery_size": int(gallery_size),
      "n_queries": int(len(ranks)),
      "n_subjects": int(len(np.unique(subjects))),
      "seed": int(seed),
      "n_bootstrap": int(n_bootstrap),
  }
  for k in TOP_K:
    hits = ranks < k
    out[f"top{k}"] = {
        "value": float(hits.mean()),
        "ci95": _rate_ci(hits, subjects, n_bootstrap, seed),
    }
    out[f"chance_top{k}"] = min(k, gallery_size) / gallery_size
  out["median_rank"] = float(np.median(ranks)) + 1.0  # 1 = nearest
  out["mean_reciprocal_rank"] = float(np.mean(1.0 / (ranks + 1)))
  return out


def retrieve(
    encoder,
    data: str | os.PathLike,
    *,
    query: str = "ecg",
    gallery: str = "ppg",
    gallery_size: int = 100,
    seed: int = 0,
    n_bootstrap: int = 1000,
    splits: Sequence[str] | None = None,
    source: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Reads every window of `data` that has both modalities, embeds each modality alone with
  `encoder` (which must take both, e.g. an M2AE ppg+ecg package) and scores the retrieval."""
  if query == gallery:
    raise RetrievalError(
        f"query and gallery are both {query}: cross-modal retrieval needs two " "modalities"
    )
  modalities = encoder.check_modalities((query, gallery))
  source = source or embed_lib.detect_source(data)
  segs = embed_lib.read_segments(
      data,
      modalities,
      contract=encoder.contract,
      source=source,
      splits=splits,
      options=options,
      alignment=embed_lib.encoder_alignment(encoder),
  )
  # Before embedding, so the one line comes without the wait.
  check_gallery_size(
      gallery_size, len(set(segs.subject_ids)), f"{data} (windows with {query} and {gallery})"
  )
  z_query = embed_lib.embed_windows(encoder, **{query: segs.signals[query]})
  z_gallery = embed_lib.embed_windows(encoder, **{gallery: segs.signals[gallery]})
  result = retrieval_scores(
      z_query,
      z_gallery,
      segs.subject_ids,
      gallery_size=gallery_size,
      seed=seed,
      n_bootstrap=n_bootstrap,
  )
  info = encoder.info if isinstance(encoder.info, dict) else {}
  return {
      "query": query,
      "gallery": gallery,
      **result,
      "model_name": str(encoder.config.model.name),
      "encoder": info.get("path") or str(info.get("source", "")),
      "data": str(Path(data).absolute()),
      "source": source,
      "splits": list(splits) if splits else "all",
      "notes": segs.notes,
  }


def retrieval_markdown(result: dict[str, Any]) -> str:
  r = result
  ci = lambda m: f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"  # noqa: E731
  return (
      "\n".join(
          [
              f"# Cross-modal retrieval: {r['query'].upper()} query -> "
              f"{r['gallery'].upper()} gallery",
              "",
              f"Encoder `{r['encoder']}` ({r['model_name']}), data `{r['data']}` "
              f"(split {r['splits']}).",
              "",
              "| query | gallery | gallery size | top-1 | chance top-1 | top-5 | chance top-5 | "
              "median rank | MRR | queries | subjects |",
              "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| {r['query']} | {r['gallery']} | {r['gallery_size']} | {ci(r['top1'])} | "
              f"{r['chance_top1']:.3f} | {ci(r['top5'])} | {r['chance_top5']:.3f} | "
              f"{r['median_rank']:g} | {r['mean_reciprocal_rank']:.3f} | {r['n_queries']} | "
              f"{r['n_subjects']} |",
              "",
              f"Each query window's gallery: its own {r['gallery']} fingerprint and one window "
              f"each of {r['gallery_size'] - 1} other subjects (drawn per query, seed "
              f"{r['seed']}); cosine similarity, ties counted against the query. value "
              f"[95% CI from {r['n_bootstrap']} subject-bootstrap resamples].",
          ]
      )
      + "\n"
  )


def write_report(result: dict[str, Any], out_dir) -> dict[str, Path]:
  """OUT/results.json and OUT/table.md."""
  out = Path(out_dir)
  paths = {"json": out / "results.json", "markdown": out / "table.md"}
  report.write_json(paths["json"], result)
  report.write_text(paths["markdown"], retrieval_markdown(result))
  return paths
