"""embedhost.quantize against sentence-transformers' quantize_embeddings: binary, ubinary,
uint8 and int8 bit-exact (the last two given the same ranges, inside them and outside,
where both clip); int8 = uint8 - 128."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from embedhost import quantize


def _rows(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims)).astype(np.float32)
    v[0, :5] = 0.0  # zero is not positive: its bit is 0
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("dims", [384, 100, 7, 8])
def test_binary_and_ubinary_bit_exact_with_sentence_transformers(dims: int) -> None:
    v = _rows(50, dims)
    ub = quantize.ubinary(v)
    b = quantize.binary(v)
    st_ub = quantize_embeddings(v, "ubinary")
    st_b = quantize_embeddings(v, "binary")
    assert ub.dtype == st_ub.dtype == np.uint8 and b.dtype == st_b.dtype == np.int8
    assert ub.shape == (50, (dims + 7) // 8)
    assert np.array_equal(ub, st_ub) and np.array_equal(b, st_b)
    assert np.array_equal(b.astype(np.int16) + 128, ub.astype(np.int16))


def test_uint8_int8_inside_calibration_ranges_equal_sentence_transformers() -> None:
    calibration = _rows(500, 64, seed=1)
    ranges = quantize.ranges_of(calibration)
    assert ranges.dtype == np.float32 and ranges.shape == (2, 64)
    # Rows inside the ranges: the calibration rows themselves, and clipped fresh ones.
    v = np.clip(_rows(100, 64, seed=2), ranges[0], ranges[1])
    v = np.concatenate([calibration[:50], v])
    st = quantize_embeddings(v, "uint8", ranges=ranges)
    ours = quantize.uint8(v, ranges)
    assert np.array_equal(ours, st)
    i8 = quantize.int8(v, ranges)
    assert i8.dtype == np.int8
    assert np.array_equal(i8.astype(np.int16), ours.astype(np.int16) - 128)
    # Every level is reachable: min maps to 0 and max to 254 or 255 (256 steps).
    lo = quantize.uint8(ranges[:1], ranges)
    assert (lo == 0).all()
    assert (quantize.uint8(ranges[1:], ranges) >= 254).all()


def test_outside_the_ranges_clips() -> None:
    ranges = np.array([[-0.1, 0.0], [0.1, 0.5]], dtype=np.float32)
    v = np.array([[-0.5, 0.9], [0.5, -0.2], [0.0, 0.25]], dtype=np.float32)
    u = quantize.uint8(v, ranges)
    assert u.tolist() == [[0, 255], [255, 0], [127, 127]]
    assert quantize.int8(v, ranges).tolist() == [[-128, 127], [127, -128], [-1, -1]]
    assert np.array_equal(u, quantize_embeddings(v, "uint8", ranges=ranges))
    assert np.array_equal(quantize.int8(v, ranges), quantize_embeddings(v, "int8", ranges=ranges))
    wide = _rows(200, 64, seed=4) * 3  # mostly outside the ranges of unit rows
    r = quantize.ranges_of(_rows(100, 64, seed=5))
    assert np.array_equal(quantize.int8(wide, r), quantize_embeddings(wide, "int8", ranges=r))


def test_a_flat_dimension_does_not_divide_by_zero() -> None:
    ranges = np.array([[0.2, -1.0], [0.2, 1.0]], dtype=np.float32)
    v = np.array([[0.1, 0.0], [0.2, 0.0], [0.3, 0.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        u = quantize.uint8(v, ranges)
    assert np.array_equal(u, quantize_embeddings(v, "uint8", ranges=ranges))


def test_wrong_ranges_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="ranges"):
        quantize.uint8(_rows(2, 8), np.zeros((2, 4), dtype=np.float32))


def test_postprocess_truncates_then_normalizes() -> None:
    raw = np.arange(12, dtype=np.float32).reshape(2, 6) + 1
    out = quantize.postprocess(raw, 3, True)
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert np.array_equal(quantize.postprocess(raw, None, False), raw)


def test_encode_every_type() -> None:
    v = _rows(3, 16)
    ranges = quantize.ranges_of(_rows(40, 16, seed=3))
    out = quantize.encode(v, list(quantize.EMBEDDING_TYPES), ranges)
    assert set(out) == set(quantize.EMBEDDING_TYPES)
    assert out["float"] is v
    assert np.frombuffer(base64.b64decode(out["base64"][1]), "<f4").tolist() == v[1].tolist()
    assert out["binary"].shape == (3, 2) and out["int8"].shape == (3, 16)
    with pytest.raises(ValueError, match="calibration"):
        quantize.encode(v, ["int8"])
