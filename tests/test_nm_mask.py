import itertools

import pytest
import torch

from ast_ds.sparsity import (magnitude_nm_mask, nm_mask_flat, nm_mask_from_scores, pack_bits, parse_nm, unpack_bits,
                             verify_nm)

PATTERNS = [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32)]


def brute_force_mask(w, n, m):
    """For every group, the set of n indices with the largest |w| (values are distinct)."""
    keep = torch.zeros_like(w, dtype=torch.bool)
    rows, cols = w.shape
    for r in range(rows):
        for c in range(0, cols, m):
            group = w[r, c:c + m].abs().tolist()
            best = max(itertools.combinations(range(m), n), key=lambda idx: sum(group[i] for i in idx))
            for i in best:
                keep[r, c + i] = True
    return keep


@pytest.mark.parametrize("n,m", PATTERNS)
def test_mask_keeps_n_largest_per_group(n, m):
    torch.manual_seed(n * 100 + m)
    w = torch.randn(3, 2 * m)
    keep = magnitude_nm_mask(w, n=n, m=m)
    assert keep.dtype == torch.bool and keep.shape == w.shape
    assert torch.equal(keep.view(-1, m).sum(1), torch.full((w.numel() // m,), n))
    if m <= 16:  # brute force over combinations is cheap up to C(16, 8)
        assert torch.equal(keep, brute_force_mask(w, n, m))
    else:  # closed form: the kept entries are exactly the n largest of each group
        groups = w.abs().view(-1, m)
        kth = groups.sort(dim=1, descending=True).values[:, n - 1: n]
        assert torch.equal(keep.view(-1, m), groups >= kth)


def test_ties_keep_lower_index_deterministically():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, -2.0, 2.0, 0.5, 2.0]])
    keep = magnitude_nm_mask(w, n=2, m=4)
    assert keep.tolist() == [[True, True, False, False, True, True, False, False]]
    assert torch.equal(keep, magnitude_nm_mask(w.clone(), n=2, m=4))


def test_input_dim_not_divisible_raises_with_fix():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask_from_scores(torch.randn(4, 6), n=2, m=4)
    with pytest.raises(ValueError, match="N:M"):
        parse_nm("2-4")
    assert parse_nm("2:4") == (2, 4)
    with pytest.raises(ValueError):
        parse_nm("5:4")


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 2)])
def test_flat_slice_with_head_and_tail_equals_full_mask(n, m):
    torch.manual_seed(0)
    w = torch.randn(5, 4 * m)
    full = magnitude_nm_mask(w, n=n, m=m).view(-1)
    flat = w.view(-1)
    for start in range(0, flat.numel(), 3):
        for length in (1, 2, m - 1, m, m + 1, 3 * m + 1):
            end = min(flat.numel(), start + length)
            head_len, tail_len = start % m, (-end) % m
            head = flat[start - head_len: start] if head_len else None
            tail = flat[end: end + tail_len] if tail_len else None
            got = nm_mask_flat(flat[start:end], offset=start, n=n, m=m, head=head, tail=tail)
            assert torch.equal(got, full[start:end]), (start, end)


def test_flat_slice_needs_head():
    with pytest.raises(ValueError, match="head"):
        nm_mask_flat(torch.randn(6), offset=2, n=2, m=4)


def test_verify_reports_offenders():
    w = torch.randn(4, 8)
    w = w * magnitude_nm_mask(w, n=2, m=4)
    assert verify_nm(w, n=2, m=4).ok
    assert verify_nm(w, n=2, m=4).sparsity == pytest.approx(0.5)
    w[2, 4:8] = 1.0  # row 2, group starting at column 4: 4 nonzeros
    report = verify_nm(w, n=2, m=4)
    assert not report.ok and report.num_bad_groups == 1
    assert report.offenders == [(2, 4, 4)]
    assert report.to_dict()["ok"] is False


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_pack_roundtrip(numel):
    mask = torch.rand(numel) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (numel + 7) // 8
    assert torch.equal(unpack_bits(packed, numel), mask)


def test_unpack_bit_range_reads_only_the_bytes_it_needs():
    from ast_ds.sparsity.nm_mask import pack_bits, unpack_bit_range

    g = torch.Generator().manual_seed(0)
    bits = torch.rand(203, generator=g) > 0.5
    packed = pack_bits(bits)
    for start, numel in [(0, 203), (3, 0), (5, 11), (8, 8), (17, 100), (195, 8)]:
        assert torch.equal(unpack_bit_range(packed, start, numel), bits[start:start + numel])


def test_masks_of_one_partition_layout_are_regathered_for_another():
    """The saved slices of W ranks (bit-packed, each with its layout) give any element range exactly."""
    from ast_ds.sparsity.nm_mask import pack_bits
    from ast_ds.sparsity.slices import gather_bits

    g = torch.Generator().manual_seed(1)
    full, initial = torch.rand(50, generator=g) > 0.5, torch.rand(50, generator=g) > 0.5
    pieces = []
    for start, length in [(0, 17), (17, 17), (34, 16)]:  # 3 saved ranks, one weight, pn = 17
        pieces.append((start, length, pack_bits(full[start:start + length]),
                       pack_bits(initial[start:start + length]), 0))
    for start, length in [(0, 25), (25, 25), (10, 30), (49, 1)]:  # 2 new ranks, and odd ranges
        cur, ini = gather_bits(pieces, "w", start, length, initial=True)
        assert torch.equal(cur, full[start:start + length]) and torch.equal(ini, initial[start:start + length])
    with pytest.raises(ValueError, match="cover"):
        gather_bits(pieces[:2], "w", 30, 10, initial=False)
