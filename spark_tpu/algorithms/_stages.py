"""SPARK's stage schedule (docs/spark.md §4): round boundaries with (λ, T, μ) per stage, annealed within a
stage where asked.

Syntax (``--spark_stages``): stages separated by ``;``, each ``START: key=value, ...`` with keys
``lam`` (regularizer weight λ ∈ [0, 1]), ``T`` (temperature > 0) and ``mu`` (momentum ∈ [0, 1)).
A value is a number, or ``a->b`` annealed from a at the stage's start to b at its end (the next
stage's start, or the last round), optionally ``@cos`` (cosine) instead of the default ``@linear``.
Unset keys carry over from the previous stage (initially lam=0, T=1, mu=0). Example:

    0: lam=0, mu=0; 5: lam=0.5->0.05@cos, T=2, mu=0.9
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from absl import logging

KEYS = {"lam": (0.0, 1.0, True), "T": (0.0, None, False), "mu": (0.0, 1.0, False)}
INITIAL = {"lam": 0.0, "T": 1.0, "mu": 0.0}
BAD = "--spark_stages={text!r}: {why}. Example: '0: lam=0, mu=0; 5: lam=0.5->0.05@cos, mu=0.9'."


class Schedule(NamedTuple):
    """Parsed stages as arrays: starts [S], ends [S], and per key [S] start/end values, cosine."""

    starts: np.ndarray
    ends: np.ndarray
    begin: dict
    end: dict
    cosine: dict

    def __call__(self, round_index) -> dict:
        """{'lam', 'T', 'mu'} at a (traced) 0-based round index."""
        r = jnp.asarray(round_index, jnp.float32)
        s = jnp.clip(jnp.searchsorted(jnp.asarray(self.starts), r, side="right") - 1, 0)
        start = jnp.asarray(self.starts)[s]
        length = jnp.maximum(jnp.asarray(self.ends)[s] - start, 1.0)
        frac = jnp.clip((r - start) / length, 0.0, 1.0)
        out = {}
        for k in KEYS:
            a, b = jnp.asarray(self.begin[k])[s], jnp.asarray(self.end[k])[s]
            shape = jnp.where(jnp.asarray(self.cosine[k])[s], 0.5 - 0.5 * jnp.cos(jnp.pi * frac), frac)
            out[k] = (a + (b - a) * shape).astype(jnp.float32)
        return out


def _value(text, key, raw):
    shape = "linear"
    if "@" in raw:
        raw, shape = (p.strip() for p in raw.split("@", 1))
        if shape not in ("linear", "cos"):
            raise ValueError(BAD.format(text=text, why=f"annealing '@{shape}' is not linear or cos"))
    parts = [p.strip() for p in raw.split("->")]
    if len(parts) > 2:
        raise ValueError(BAD.format(text=text, why=f"'{key}={raw}' has more than one '->'"))
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(BAD.format(text=text, why=f"'{key}={raw}' is not a number")) from None
    lo, hi, hi_ok = KEYS[key]
    for v in vals:
        ok = v >= lo if key != "T" else v > 0
        if hi is not None:
            ok = ok and (v <= hi if hi_ok else v < hi)
        if not ok:
            rng = "(0, ∞)" if key == "T" else f"[{lo}, {hi}{']' if hi_ok else ')'}"
            raise ValueError(BAD.format(text=text, why=f"{key}={v} is outside {rng}"))
    return vals[0], vals[-1], shape == "cos"


def parse_stages(text: str, rounds: int) -> Schedule:
    """Parses and validates a stage schedule for a run of ``rounds`` rounds.

    Examples:
      A 2-round warm-up of plain NTK-DFL, then λ annealed 0.5 → 0.1 (cosine) to the last round:

      >>> s = parse_stages("0: lam=0, mu=0; 2: lam=0.5->0.1@cos, T=2, mu=0.9", rounds=6)
      >>> s.starts.tolist(), s.ends.tolist()
      ([0.0, 2.0], [2.0, 6.0])
      >>> {k: round(float(v), 4) for k, v in s(0).items()}
      {'lam': 0.0, 'T': 1.0, 'mu': 0.0}
      >>> {k: round(float(v), 4) for k, v in s(4).items()}  # halfway: (0.5 + 0.1) / 2
      {'lam': 0.3, 'T': 2.0, 'mu': 0.9}
      >>> parse_stages("0: lam=2", rounds=5)
      Traceback (most recent call last):
      ...
      ValueError: --spark_stages='0: lam=2': lam=2.0 is outside [0.0, 1.0]. Example: ...
    """
    stages = [s.strip() for s in (text or "0: lam=0").split(";") if s.strip()]
    starts, rows = [], []
    current = dict(INITIAL)
    for stage in stages:
        if ":" not in stage:
            raise ValueError(BAD.format(text=text, why=f"stage '{stage}' has no 'START:'"))
        head, body = stage.split(":", 1)
        try:
            start = int(head)
        except ValueError:
            raise ValueError(BAD.format(text=text, why=f"stage start '{head}' is not an integer")) from None
        row = {k: (v, v, False) for k, v in current.items()}
        for item in filter(None, (p.strip() for p in body.split(","))):
            key, _, raw = item.partition("=")
            key = key.strip()
            if key not in KEYS or not raw:
                raise ValueError(BAD.format(text=text, why=f"'{item}' is not one of lam=, T=, mu="))
            row[key] = _value(text, key, raw)
        current = {k: v[1] for k, v in row.items()}
        starts.append(start)
        rows.append(row)
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(BAD.format(text=text, why=f"starts {starts} must begin at 0 and increase"))
    kept = [i for i, s in enumerate(starts) if s < rounds]
    if len(kept) < len(starts):
        logging.warning("--spark_stages: stages starting at ≥ --rounds=%d never run", rounds)
        starts, rows = [starts[i] for i in kept], [rows[i] for i in kept]
    ends = starts[1:] + [rounds]
    f32 = lambda xs: np.asarray(xs, np.float32)  # noqa: E731
    return Schedule(
        starts=f32(starts), ends=f32(ends),
        begin={k: f32([r[k][0] for r in rows]) for k in KEYS},
        end={k: f32([r[k][1] for r in rows]) for k in KEYS},
        cosine={k: np.asarray([r[k][2] for r in rows]) for k in KEYS},
    )
