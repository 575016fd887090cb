"""Perceptual hashes and the close-pair search the dataset audit is built on."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from agejax.auditing import hash_pairs
from agejax.auditing import image_hashes
from agejax.benchmark import audit_bench
from data_builders.synthetic_faces import faces


def _brute_force(queries, base, max_distance, self_search):
  found = set()
  for i, j in itertools.product(range(len(queries)), range(len(base))):
    if self_search and i >= j:
      continue
    d = bin(int(queries[i]) ^ int(base[j])).count("1")
    if d <= max_distance:
      found.add((i, j, d))
  return found


@pytest.mark.parametrize("n,max_distance", [(300, 0), (300, 4), (400, 8), (200, 13)])
def test_the_search_finds_exactly_the_pairs_all_pairs_comparison_finds(n, max_distance):
  # Planted copies at every distance up to max_distance + 2, among random hashes.
  rng = np.random.default_rng(n + max_distance)
  hashes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
  for k in range(n // 4):
    bits = rng.choice(64, int(rng.integers(0, max_distance + 3)), replace=False)
    hashes[n - 1 - k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in bits))
  i, j, d = hash_pairs.pairs(hashes, max_distance=max_distance)
  want = _brute_force(hashes, hashes, max_distance, True)
  assert set(zip(i.tolist(), j.tolist(), d.tolist())) == want and len(i) == len(want) > 0
  other = hashes[::-1].copy()
  i, j, d = hash_pairs.pairs(hashes[:50], other, max_distance=max_distance)
  assert set(zip(i.tolist(), j.tolist(), d.tolist())) == _brute_force(
      hashes[:50], other, max_distance, False)


def test_chunks_are_as_wide_as_log2_n_and_never_more_than_the_pigeonhole_needs():
  assert hash_pairs.chunk_count(10_000, 4) == 4  # 14-bit chunks: 64 // 14
  assert hash_pairs.chunk_count(1_000_000, 4) == 3  # 20 bits
  assert hash_pairs.chunk_count(1_000_000, 1) == 2  # t + 1 chunks suffice
  assert hash_pairs.chunk_count(10, 8) == 8  # at least 8 bits a chunk


def test_hamming_and_packing_follow_their_definitions():
  bits = np.zeros((2, 64), bool)
  bits[0, 0] = True  # the most significant bit
  bits[1, [0, 63]] = True
  packed = image_hashes.pack(bits)
  assert packed.tolist() == [1 << 63, (1 << 63) | 1]
  assert image_hashes.hamming(packed, np.zeros(2, np.uint64)).tolist() == [1, 2]


def _jpeg(image, quality):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(buffer).convert("RGB"))


def test_a_re_encoded_or_brighter_copy_hashes_close_and_a_mirror_matches_its_mirror_hash():
  images = np.stack([faces.example(0, "validation", i, 64)[0] for i in range(40)])
  original = image_hashes.phash(images)
  reencoded = image_hashes.phash(np.stack([_jpeg(x, 75) for x in images]))
  brighter = image_hashes.phash(np.clip(images.astype(int) + 12, 0, 255).astype(np.uint8))
  mirrored = image_hashes.phash(images[:, :, ::-1])
  # Measured on these 40 faces: re-encoding moves up to 8 of 64 bits (median
  # 2), a brightness shift of +12 up to 2; two distinct faces of the 40 are
  # a median 32 bits apart.
  assert image_hashes.hamming(original, reencoded).max() <= 8
  assert np.median(image_hashes.hamming(original, reencoded)) <= 2
  assert image_hashes.hamming(original, brighter).max() <= 2
  # The mirror copy's hash is the original's mirror hash, bit for bit.
  np.testing.assert_array_equal(mirrored, image_hashes.mirrored(image_hashes.phash, images))
  # The exact-duplicate key: equal pixels, equal digest; one changed pixel, another.
  changed = images[0].copy()
  changed[10, 10, 0] ^= 1
  assert image_hashes.pixel_digest(images[0]) == image_hashes.pixel_digest(images[0].copy())
  assert image_hashes.pixel_digest(changed) != image_hashes.pixel_digest(images[0])


def test_area_resize_averages_whole_blocks():
  image = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
  np.testing.assert_allclose(image_hashes.area_resize(image, 2, 2)[0],
                             [[2.5, 4.5], [10.5, 12.5]])


def test_the_benchmark_plants_copies_within_the_distance():
  hashes, planted = audit_bench.planted_hashes(2000, 4)
  assert len(planted) == 20
  for a, b in planted:
    assert image_hashes.hamming(hashes[a], hashes[b]) <= 4
