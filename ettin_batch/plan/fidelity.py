"""The fidelity check: the engine's scores against sentence-transformers' on the same model and pairs.

The reference is `CrossEncoder.predict(pairs, activation_fn=Identity())` (raw logits), the call the
engine replaces. The bars are the test suite's (tests/test_engine_fidelity.py):

    float32            max |engine - reference| <= FP32_TOL
    bfloat16, float16  (when the job runs in one, e.g. auto on a GPU) the engine's RMS error against the
                       float32 reference at most HALF_RMS_RATIO x that of CrossEncoder in the same dtype

Rank agreement within each query (the sample holds whole queries' candidates) is reported beside:
with max |diff| <= FP32_TOL, two candidates can only swap if their reference scores differ by less
than 2 x FP32_TOL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ettin_batch.plan.sample import groups_of

FP32_TOL = 1e-4
HALF_RMS_RATIO = 1.2
PREDICT_BATCH = 32  # CrossEncoder.predict's default


def reference_scores(path: str, queries: list[str], documents: list[str], *, max_length: int, device: str,
                     dtype: str = "float32") -> np.ndarray:
    """CrossEncoder.predict's raw logits (float32 [n]) for the pairs, on `device` in `dtype`."""
    import torch
    from sentence_transformers import CrossEncoder

    torch_dtype = getattr(torch, dtype)
    ce = CrossEncoder(path, max_length=max_length, device=device,
                      model_kwargs={"use_safetensors": True, "dtype": torch_dtype})
    ce.to(torch_dtype)  # the head modules: sentence-transformers casts them to the encoder's dtype, older ones may not
    scores = ce.predict(list(zip(queries, documents)), activation_fn=torch.nn.Identity(), batch_size=PREDICT_BATCH,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(scores, np.float32).reshape(-1)


def rank_agreement(query_codes: np.ndarray, ours: np.ndarray, ref: np.ndarray, tie: float) -> dict:
    """Within each query of 2+ candidates: whether the order is the same, and which candidate pairs the
    reference orders apart by more than `tie` but the engine orders the other way."""
    queries = same = compared = swapped = 0
    for rows in groups_of(query_codes):
        if len(rows) < 2:
            continue
        queries += 1
        a, b = ours[rows], ref[rows]
        same += bool(np.array_equal(np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")))
        i, j = np.triu_indices(len(rows), 1)
        apart = np.abs(b[i] - b[j]) > tie
        compared += int(apart.sum())
        swapped += int((np.sign(a[i] - a[j]) != np.sign(b[i] - b[j]))[apart].sum())
    return {"queries_compared": queries, "queries_same_order": same, "candidate_pairs_compared": compared,
            "candidate_pairs_swapped": swapped}


@dataclass
class Fidelity:
    """One comparison of the engine with the reference."""

    dtype: str
    pairs: int
    max_abs_diff: float
    rms_diff: float
    reference_std: float  # spread of the reference scores: near 0, the check compares constants
    ranks: dict
    passed: bool
    bar: str
    half_reference_rms: float | None = None  # CrossEncoder in the same half dtype, against float32

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "pairs": self.pairs, "max_abs_diff": float(self.max_abs_diff),
                "rms_diff": float(self.rms_diff), "reference_std": float(self.reference_std),
                "crossencoder_same_dtype_rms_diff": self.half_reference_rms, "rank_agreement": self.ranks,
                "bar": self.bar, "result": "PASS" if self.passed else "FAIL"}


def compare_float32(query_codes: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> Fidelity:
    """The engine in float32 against CrossEncoder.predict in float32: PASS if max |diff| <= FP32_TOL."""
    diff = np.abs(ours - ref)
    worst = float(diff.max()) if len(diff) else 0.0
    return Fidelity("float32", len(ref), worst, _rms(ours, ref), float(np.std(ref)) if len(ref) else 0.0,
                    rank_agreement(query_codes, ours, ref, 2 * FP32_TOL), worst <= FP32_TOL,
                    f"max |engine - CrossEncoder.predict| <= {FP32_TOL:g}")


def compare_half(dtype: str, query_codes: np.ndarray, ours: np.ndarray, ref32: np.ndarray,
                 ref_half: np.ndarray) -> Fidelity:
    """The engine in a half dtype against float32 CrossEncoder: PASS if its RMS error is at most
    HALF_RMS_RATIO x CrossEncoder's own in that dtype."""
    theirs, mine = _rms(ref_half, ref32), _rms(ours, ref32)
    return Fidelity(dtype, len(ref32), float(np.abs(ours - ref32).max()) if len(ref32) else 0.0, mine,
                    float(np.std(ref32)) if len(ref32) else 0.0, rank_agreement(query_codes, ours, ref32, 0.0),
                    mine <= HALF_RMS_RATIO * theirs,
                    f"RMS(engine {dtype} - CrossEncoder float32) <= {HALF_RMS_RATIO} x "
                    f"RMS(CrossEncoder {dtype} - CrossEncoder float32)", theirs)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2))) if len(a) else 0.0
