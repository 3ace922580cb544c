"""Cross-modal retrieval scoring on constructed fingerprints whose partners are known."""

import numpy as np
import pytest

from xmae_jax.evaluation import retrieval


def _constructed(n_subjects=40, per_subject=3, latent=16, seed=0):
  """(query, gallery, subjects): gallery row i = query row i + small noise."""
  rng = np.random.default_rng(seed)
  subjects = np.repeat([f"s{i:02d}" for i in range(n_subjects)], per_subject)
  query = rng.normal(size=(len(subjects), latent))
  return query, query + 0.01 * rng.normal(size=query.shape), subjects


def test_known_partners_are_found():
  query, gallery, subjects = _constructed()
  r = retrieval.retrieval_scores(query, gallery, subjects, gallery_size=10, n_bootstrap=50)
  assert r["top1"]["value"] == 1.0 and r["top5"]["value"] == 1.0
  assert r["top1"]["ci95"] == [1.0, 1.0]
  assert r["chance_top1"] == 0.1 and r["chance_top5"] == 0.5
  assert r["n_queries"] == 120 and r["n_subjects"] == 40 and r["median_rank"] == 1.0


def test_shuffled_partners_score_chance():
  query, gallery, subjects = _constructed(n_subjects=200, per_subject=4)
  shuffled = gallery[np.random.default_rng(1).permutation(len(gallery))]
  r = retrieval.retrieval_scores(query, shuffled, subjects, gallery_size=10, n_bootstrap=200)
  assert abs(r["top1"]["value"] - 0.1) < 0.04  # 800 queries: sd about 0.011
  assert abs(r["top5"]["value"] - 0.5) < 0.07
  lo, hi = r["top1"]["ci95"]
  assert lo < 0.1 < hi


def test_half_the_subjects_found_and_ties_count_against():
  query, gallery, subjects = _constructed(n_subjects=20, per_subject=2)
  odd = np.array([int(s[1:]) % 2 == 1 for s in subjects])
  gallery[odd] = -query[odd]  # cosine -1: every distractor is nearer
  r = retrieval.retrieval_scores(query, gallery, subjects, gallery_size=8, n_bootstrap=300)
  assert r["top1"]["value"] == 0.5 and r["top5"]["value"] == 0.5
  lo, hi = r["top1"]["ci95"]
  assert 0.2 < lo < 0.5 < hi < 0.8
  # All fingerprints equal: every distractor ties with the own partner and counts against it.
  same = np.ones_like(query)
  r = retrieval.retrieval_scores(same, same, subjects, gallery_size=8, n_bootstrap=10)
  assert r["top1"]["value"] == 0.0 and r["top5"]["value"] == 0.0 and r["median_rank"] == 8.0


def test_distractors_come_from_distinct_other_subjects():
  _, _, subjects = _constructed(n_subjects=12, per_subject=5)
  d = retrieval.draw_distractors(subjects, 12, seed=3)
  assert d.shape == (60, 11)
  for i, row in enumerate(d):
    others = subjects[row]
    assert subjects[i] not in others and len(set(others)) == 11
  np.testing.assert_array_equal(d, retrieval.draw_distractors(subjects, 12, seed=3))
  assert not np.array_equal(d, retrieval.draw_distractors(subjects, 12, seed=4))
  # Over many queries every window of a subject is drawn, not only its first (660 draws).
  assert len(np.unique(retrieval.draw_distractors(subjects, 12, seed=0))) == 60


def test_bad_gallery_sizes_and_shapes():
  query, gallery, subjects = _constructed(n_subjects=6)
  with pytest.raises(
      retrieval.RetrievalError,
      match=r"^gallery size 7 needs windows of at least 7 subjects .* has 6$",
  ):
    retrieval.retrieval_scores(query, gallery, subjects, gallery_size=7)
  with pytest.raises(retrieval.RetrievalError, match="at least 2"):
    retrieval.retrieval_scores(query, gallery, subjects, gallery_size=1)
  with pytest.raises(retrieval.RetrievalError, match="one row per window"):
    retrieval.retrieval_scores(query, gallery[:-1], subjects, gallery_size=3)
