"""The image x text block of a joint softmax: both normalisations, chunking, kept columns, stability."""

import torch

from explain.joint.scores import CPU_CHUNK_BYTES, MIN_MASS, text_scores

N_IMAGE, N_TEXT, HEADS, D = 12, 5, 3, 8


def _qk(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, HEADS, N_IMAGE, D, generator=gen)  # image queries
    k = torch.randn(2, HEADS, N_TEXT + N_IMAGE, D, generator=gen)  # Flux order: [text, image]
    return q, k


def test_both_normalisations_equal_explicit_softmaxes():
    q, k = _qk()
    text, scale = slice(0, N_TEXT), D**-0.5
    scores = q @ k.transpose(-1, -2) * scale  # (B, H, N, L)
    out = text_scores(q, k, text, None, scale, work_bytes=2**20)
    torch.testing.assert_close(out.share, scores.softmax(-1)[..., text])
    torch.testing.assert_close(out.text, scores[..., text].softmax(-1))
    torch.testing.assert_close(out.mass, scores.softmax(-1)[..., text].sum(-1))


def test_chunking_and_kept_columns_do_not_change_values():
    q, k = _qk(1)
    text, scale, columns = slice(0, N_TEXT), D**-0.5, torch.tensor([4, 1])
    whole = text_scores(q, k, text, None, scale, work_bytes=2**20)
    one_query = 4 * (N_TEXT + N_IMAGE) * 2 * HEADS  # bytes of one image query's scores
    chunked = text_scores(q, k, text, columns, scale, work_bytes=one_query * 5)  # chunks of 5, 5 and 2 queries
    torch.testing.assert_close(chunked.share, whole.share[..., columns])
    torch.testing.assert_close(chunked.text, whole.text[..., columns])
    torch.testing.assert_close(chunked.mass, whole.mass)


def test_text_renormalisation_is_stable_where_the_text_mass_underflows():
    q, k = _qk(2)
    k[:, :, :N_TEXT] = -1e3 * q.mean(dim=2, keepdim=True)  # text keys pointing away from the queries
    out = text_scores(q, k, slice(0, N_TEXT), None, D**-0.5, work_bytes=2**20)
    assert (out.mass < 1e-30).any()  # float32 share of text ~ 0 ...
    assert torch.isfinite(out.text).all()  # ... yet the renormalised maps are well defined
    torch.testing.assert_close(out.text.sum(-1), torch.ones_like(out.mass))


def test_text_maps_from_share_over_mass_and_the_underflow_fallback_equal_the_softmax():
    """``text`` is share / mass on the kept columns where the mass is a normal float32, and the softmax over the text
    scores itself on rows below MIN_MASS; both agree with the explicit softmax over the text tokens."""
    q, k = _qk(3)
    text, scale, columns = slice(0, N_TEXT), D**-0.5, torch.tensor([0, 3])
    shift = torch.linspace(0, 120, N_IMAGE).view(1, 1, N_IMAGE, 1)  # text ever further below the image keys
    scores = q @ k.transpose(-1, -2) * scale
    scores[..., text] -= shift  # rows from mass ~ 0.5 down to mass << MIN_MASS
    q_aug = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)  # the shift as one more query/key channel
    k_aug = torch.cat([k, torch.zeros_like(k[..., :1])], dim=-1)
    k_aug[..., text, -1] = -1.0
    q_aug[..., -1:] = shift / (D + 1) ** -0.5
    q_aug[..., :D] *= scale / (D + 1) ** -0.5
    out = text_scores(q_aug, k_aug, text, columns, (D + 1) ** -0.5, work_bytes=2**20)
    mass = scores.softmax(-1)[..., text].sum(-1)
    assert (mass < MIN_MASS).any() and (mass > 1e-3).any()  # both paths run
    torch.testing.assert_close(out.text, scores[..., text].softmax(-1)[..., columns], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.share, scores.softmax(-1)[..., columns], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.mass, mass, rtol=1e-4, atol=1e-6)
    assert torch.equal(out.packed, torch.cat([out.share, out.text, out.mass.unsqueeze(-1)], dim=-1))


def test_cpu_chunks_stay_cache_sized_and_do_not_change_values():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, HEADS, 400, D, generator=gen)  # enough image queries for several CPU chunks
    k = torch.randn(3, HEADS, 400 + N_TEXT, D, generator=gen)
    text, scale = slice(400, 400 + N_TEXT), D**-0.5
    assert 4 * k.shape[-2] * 3 * HEADS * 400 > CPU_CHUNK_BYTES  # one chunk would exceed the CPU chunk bound
    out = text_scores(q, k, text, None, scale, work_bytes=2**30)
    scores = q @ k.transpose(-1, -2) * scale
    torch.testing.assert_close(out.share, scores.softmax(-1)[..., text])
    torch.testing.assert_close(out.text, scores[..., text].softmax(-1))
